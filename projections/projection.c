/* projection.c - applying batches of checkout events to the read models.
 *
 * The C side only flattens each event into the few fields the script needs
 * (projections/lua/apply.lua does the read-model logic, atomically with the
 * checkpoint); JSON is parsed once, here, not in Lua. */
#include "projections/projection.h"
#include "common/buf.h"
#include "common/ids.h"
#include "common/redis.h"
#include "common/xmalloc.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern const char pj_lua_apply[];

#define CHUNK 1024   /* events per script call (a batch larger than this is split) */

struct pj_projection {
    cm_script apply;
    double *e2e;     /* result buffer handed out in pj_apply_res */
    size_t e2e_cap;
};

pj_projection *pj_projection_new(void)
{
    pj_projection *p = cm_xcalloc(1, sizeof *p);
    p->apply.src = pj_lua_apply;
    return p;
}

void pj_projection_free(pj_projection *p)
{
    if (!p)
        return;
    free(p->e2e);
    free(p);
}

/* The script's one-letter code of an event type (see apply.lua). */
static char type_letter(enum cm_event_type k)
{
    switch (k) {
    case CM_EV_CHECKOUT_INITIATED: return 'I';
    case CM_EV_STOCK_RESERVED: return 'R';
    case CM_EV_STOCK_RESERVATION_FAILED: return 'X';
    case CM_EV_ORDER_CREATED: return 'O';
    case CM_EV_ORDER_CREATION_FAILED: return 'Y';
    case CM_EV_STOCK_RELEASED: return 'L';
    case CM_EV_CHECKOUT_SUCCEEDED: return 'S';
    case CM_EV_CHECKOUT_FAILED: return 'F';
    case CM_EV_CHECKOUT_TIMED_OUT: return 'T';
    default: return '?';
    }
}

/* A data string usable as an id in a key, or "" (then it is not projected). */
static const char *data_id(const es_event *ev, const char *key)
{
    const char *s = es_event_data_str(ev, key);
    return s && cm_id_valid(s, strlen(s), 64) ? s : "";
}

/* Encodes data.items as "product:qty,..." keeping only well-formed lines. */
static void put_items(const es_event *ev, cm_buf *out)
{
    json_t *items = json_object_get(ev->data, "items");
    size_t i;
    json_t *it;
    json_array_foreach(items, i, it) {
        json_t *pid = json_object_get(it, "product_id"), *qty = json_object_get(it, "quantity");
        if (!json_is_string(pid) || !cm_id_valid(json_string_value(pid), json_string_length(pid), 64) ||
            !json_is_integer(qty) || json_integer_value(qty) < 1 || json_integer_value(qty) > 1000000)
            continue;
        if (out->len)
            cm_buf_putc(out, ',');
        cm_buf_printf(out, "%s:%lld", json_string_value(pid), (long long)json_integer_value(qty));
    }
}

/* Adds the script's 8 fields for ev to a. */
static void add_event(cm_argv *a, const es_event *ev)
{
    char letter = type_letter(ev->kind);
    cm_argv_adds(a, ev->entry_id);
    cm_argv_add(a, &letter, 1);
    cm_argv_adds(a, ev->aggregate_id);
    cm_argv_addll(a, (long long)ev->seq);
    cm_argv_addf(a, "%.6f", ev->emitted_at);
    cm_argv_adds(a, data_id(ev, "client_id"));
    const char *value = "";
    if (letter == 'O' || letter == 'S')
        value = data_id(ev, "order_id");
    else if (letter == 'F' && es_event_data_str(ev, "reason"))
        value = es_event_data_str(ev, "reason");
    cm_argv_adds(a, value);
    cm_buf items = CM_BUF_INIT;
    if (letter == 'R' || letter == 'L')
        put_items(ev, &items);
    cm_argv_add(a, items.data ? items.data : "", items.len);
    cm_buf_free(&items);
}

static void header(cm_argv *a, const char *bus, enum pj_mode mode)
{
    cm_argv_adds(a, PJ_CHECKPOINT_KEY);
    cm_argv_adds(a, bus);
    cm_argv_adds(a, PJ_REBUILD_LOCK_KEY);
    cm_argv_adds(a, mode == PJ_LIVE ? "live" : "rebuild");
    cm_argv_adds(a, PJ_RM_PREFIX);
    cm_argv_adds(a, CM_RM_CHANGED_CHANNEL);
    cm_argv_adds(a, CM_STATUS_PENDING);
    cm_argv_adds(a, CM_STATUS_STOCK_RESERVED);
    cm_argv_adds(a, CM_STATUS_SUCCEEDED);
    cm_argv_adds(a, CM_STATUS_FAILED);
}

/* Runs the script once on a; accumulates into res. */
static int call(pj_projection *p, redisContext *c, const cm_argv *a, pj_apply_res *res, char *err,
                size_t errlen)
{
    redisReply *r = cm_script_call(c, &p->apply, 3, a);
    if (cm_reply_failed(c, r, err, errlen))
        return PJ_EREDIS;
    int rc = PJ_OK;
    const redisReply *st = cm_reply_elem(r, 0);
    if (!cm_reply_is_str(st)) {
        snprintf(err, errlen, "unexpected projection script reply");
        rc = PJ_EREDIS;
    } else if (!strcmp(st->str, "busy")) {
        snprintf(err, errlen, "a read-model rebuild is running");
        rc = PJ_EBUSY;
    } else {
        res->applied += (size_t)cm_reply_ll(cm_reply_elem(r, 1), 0);
        res->duplicates += (size_t)cm_reply_ll(cm_reply_elem(r, 2), 0);
        for (size_t i = 3; i < r->elements; i++) {
            const redisReply *v = r->element[i];
            if (!cm_reply_is_str(v))
                continue;
            if (p->e2e_cap == res->ne2e) {
                p->e2e_cap = p->e2e_cap ? p->e2e_cap * 2 : 64;
                p->e2e = cm_xrealloc(p->e2e, p->e2e_cap * sizeof *p->e2e);
                res->e2e = p->e2e;
            }
            p->e2e[res->ne2e++] = strtod(v->str, NULL);
        }
    }
    freeReplyObject(r);
    return rc;
}

int pj_projection_apply(pj_projection *p, redisContext *c, const char *bus, es_event *const *evs, size_t n,
                        enum pj_mode mode, unsigned char *verdicts, pj_apply_res *res, char *err,
                        size_t errlen)
{
    memset(res, 0, sizeof *res);
    res->e2e = p->e2e;
    if (!c || !bus)
        return PJ_EINVAL;
    cm_argv a = {0};
    int rc = PJ_OK;
    size_t in_call = 0;
    header(&a, bus, mode);
    for (size_t i = 0; i < n && rc == PJ_OK; i++) {
        const es_event *ev = evs[i];
        unsigned char v = PJ_APPLIED;
        if (!ev->aggregate || strcmp(ev->aggregate, PJ_CHECKOUT_AGGREGATE) != 0)
            v = PJ_IGNORED;
        else if (ev->seq > PJ_MAX_SEQ)
            v = PJ_REJECTED;
        if (verdicts)
            verdicts[i] = v;
        if (v != PJ_APPLIED)
            continue;
        add_event(&a, ev);
        if (++in_call == CHUNK) {
            rc = call(p, c, &a, res, err, errlen);
            cm_argv_reset(&a);
            header(&a, bus, mode);
            in_call = 0;
        }
    }
    if (rc == PJ_OK && in_call)
        rc = call(p, c, &a, res, err, errlen);
    cm_argv_free(&a);
    return rc;
}
