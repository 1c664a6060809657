/* ui.c - GET /ui/ and /ui/{asset}: the web console's static files, compiled
 * into the binary (api/ui/, embedded by tools/embed_files.py), so the API
 * serves its console without a file system, a CDN or a build step.
 *
 * Answers carry the file's Content-Type, a strong ETag and
 * "Cache-Control: no-cache" (the browser revalidates and gets 304 when the
 * binary did not change), plus a Content-Security-Policy that allows only
 * the console's own files: no inline script, no third-party origin. Unknown
 * assets are 404 not_found (JSON, like every other error). */
#include "api/api_int.h"

#include <string.h>

/* The embedded file called name (n bytes), or NULL. */
static const api_asset *asset_find(const char *name, size_t n)
{
    for (size_t i = 0; i < api_ui_assets_count; i++)
        if (strlen(api_ui_assets[i].name) == n && !memcmp(api_ui_assets[i].name, name, n))
            return &api_ui_assets[i];
    return NULL;
}

/* Answers with asset a: 200 with its bytes, or 304 when If-None-Match names it. */
static api_flow serve(api_req *rq, const api_asset *a)
{
    rq->asset = a;
    const char *inm = api_header(rq, "If-None-Match");
    if (inm && (strstr(inm, a->etag) || !strcmp(inm, "*"))) {
        api_reply(rq, 304);
        return API_DONE;
    }
    cm_buf_put(&rq->out, a->data, a->len);
    rq->content_type = a->content_type;
    api_reply(rq, 200);
    return API_DONE;
}

api_flow api_h_ui_index(api_req *rq)
{
    const api_asset *a = asset_find("index.html", 10);
    if (!a) {
        api_error(rq, 404, "not_found", "this build has no console");
        return API_DONE;
    }
    return serve(rq, a);
}

api_flow api_h_ui_asset(api_req *rq)
{
    const api_asset *a = asset_find(rq->param, rq->param_len);
    if (!a) {
        api_error(rq, 404, "not_found", "no console file named %.64s", rq->param);
        return API_DONE;
    }
    return serve(rq, a);
}
