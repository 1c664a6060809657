/* envelope.c - decode and encode the event envelope of DESIGN.md. */
#include "event_store/event.h"
#include "common/clock.h"
#include "common/ids.h"
#include "common/xmalloc.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_PAYLOAD (1024 * 1024)

void es_event_free(es_event *ev)
{
    if (!ev)
        return;
    free(ev->entry_id);
    free(ev->type);
    free(ev->ts);
    free(ev->payload);
    free(ev->event_id);
    free(ev->aggregate);
    free(ev->aggregate_id);
    free(ev->correlation_id);
    free(ev->causation_id);
    free(ev->producer);
    json_decref(ev->data);
    free(ev);
}

/* True if s[0..n) is a non-negative JSON number ("1691234567.89", "12",
 * "1.5e3"): the ts field is embedded as is in JSON answers, so anything
 * strtod alone would take (" 5", ".5", "0x10", a NUL inside) is refused. */
static bool ts_valid(const char *s, size_t n)
{
    size_t i = 0;
    if (i < n && s[i] == '0')
        i++;
    else if (i < n && s[i] >= '1' && s[i] <= '9')
        while (i < n && s[i] >= '0' && s[i] <= '9')
            i++;
    else
        return false;
    if (i < n && s[i] == '.') {
        size_t d = ++i;
        while (i < n && s[i] >= '0' && s[i] <= '9')
            i++;
        if (i == d)
            return false;
    }
    if (i < n && (s[i] == 'e' || s[i] == 'E')) {
        i++;
        if (i < n && (s[i] == '+' || s[i] == '-'))
            i++;
        size_t d = i;
        while (i < n && s[i] >= '0' && s[i] <= '9')
            i++;
        if (i == d)
            return false;
    }
    char tmp[64];
    if (i != n || n >= sizeof tmp)
        return false;
    memcpy(tmp, s, n);
    tmp[n] = '\0';
    return isfinite(strtod(tmp, NULL));
}

/* Copies the string member key of o into *dst; required members must be
 * non-empty strings. Returns 0 or -1 with err. */
static int take_str(json_t *o, const char *key, bool required, char **dst, char *err, size_t errlen)
{
    json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v)) {
        if (!required)
            return 0;
        snprintf(err, errlen, "payload has no \"%s\"", key);
        return -1;
    }
    if (!json_is_string(v) || json_string_length(v) == 0 || json_string_length(v) > 256) {
        snprintf(err, errlen, "payload \"%s\" must be a non-empty string of at most 256 bytes", key);
        return -1;
    }
    *dst = cm_xstrndup(json_string_value(v), json_string_length(v));
    return 0;
}

int es_event_decode(const char *entry_id, const char *type, size_t type_len, const char *payload,
                    size_t payload_len, const char *ts, size_t ts_len, es_event **out, char *err,
                    size_t errlen)
{
    *out = NULL;
    es_event *ev = cm_xcalloc(1, sizeof *ev);
    ev->kind = CM_EV_UNKNOWN;
    ev->entry_id = cm_xstrdup(entry_id ? entry_id : "");
    ev->type = cm_xstrndup(type, type_len);
    ev->ts = cm_xstrndup(ts, ts_len);
    ev->payload = cm_xstrndup(payload, payload_len);
    ev->payload_len = payload_len;

    if (type_len == 0 || strlen(ev->type) != type_len) {
        snprintf(err, errlen, "entry %s: empty or binary type field", ev->entry_id);
        goto fail;
    }
    if (!ts_valid(ts, ts_len)) {
        snprintf(err, errlen, "entry %s: ts field is not a number of seconds", ev->entry_id);
        goto fail;
    }
    if (payload_len > MAX_PAYLOAD) {
        snprintf(err, errlen, "entry %s: payload larger than %d bytes", ev->entry_id, MAX_PAYLOAD);
        goto fail;
    }
    json_error_t jerr;
    json_t *root = json_loadb(payload, payload_len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) {
        snprintf(err, errlen, "entry %s: payload is not JSON: %s (at byte %d)", ev->entry_id, jerr.text,
                 jerr.position);
        goto fail;
    }
    if (!json_is_object(root)) {
        snprintf(err, errlen, "entry %s: payload is not a JSON object", ev->entry_id);
        json_decref(root);
        goto fail;
    }
    char emsg[200];
    char *ptype = NULL;
    if (take_str(root, "event_id", true, &ev->event_id, emsg, sizeof emsg) ||
        take_str(root, "type", true, &ptype, emsg, sizeof emsg) ||
        take_str(root, "aggregate", true, &ev->aggregate, emsg, sizeof emsg) ||
        take_str(root, "aggregate_id", true, &ev->aggregate_id, emsg, sizeof emsg) ||
        take_str(root, "correlation_id", true, &ev->correlation_id, emsg, sizeof emsg) ||
        take_str(root, "causation_id", false, &ev->causation_id, emsg, sizeof emsg) ||
        take_str(root, "producer", true, &ev->producer, emsg, sizeof emsg)) {
        snprintf(err, errlen, "entry %s: %s", ev->entry_id, emsg);
        free(ptype);
        json_decref(root);
        goto fail;
    }
    bool type_ok = !strcmp(ptype, ev->type);
    free(ptype);
    if (!type_ok) {
        snprintf(err, errlen, "entry %s: payload type differs from the entry's type field", ev->entry_id);
        json_decref(root);
        goto fail;
    }
    if (!cm_uuid_valid(ev->event_id)) {
        snprintf(err, errlen, "entry %s: event_id is not a UUID", ev->entry_id);
        json_decref(root);
        goto fail;
    }
    json_t *schema = json_object_get(root, "schema");
    if (!json_is_integer(schema) || json_integer_value(schema) != ES_SCHEMA_VERSION) {
        snprintf(err, errlen, "entry %s: unknown schema (this build reads schema %d)", ev->entry_id,
                 ES_SCHEMA_VERSION);
        json_decref(root);
        goto fail;
    }
    ev->schema = ES_SCHEMA_VERSION;
    json_t *seq = json_object_get(root, "seq");
    if (!json_is_integer(seq) || json_integer_value(seq) < 1) {
        snprintf(err, errlen, "entry %s: seq must be an integer >= 1", ev->entry_id);
        json_decref(root);
        goto fail;
    }
    ev->seq = json_integer_value(seq);
    json_t *em = json_object_get(root, "emitted_at");
    if (!json_is_number(em)) {
        snprintf(err, errlen, "entry %s: emitted_at must be a number", ev->entry_id);
        json_decref(root);
        goto fail;
    }
    ev->emitted_at = json_number_value(em);
    json_t *data = json_object_get(root, "data");
    if (!json_is_object(data)) {
        snprintf(err, errlen, "entry %s: data must be a JSON object", ev->entry_id);
        json_decref(root);
        goto fail;
    }
    ev->data = json_incref(data);
    json_decref(root);
    ev->kind = cm_event_type_parse(ev->type);
    *out = ev;
    return 0;
fail:
    es_event_free(ev);
    return -1;
}

int es_event_from_entry(const redisReply *entry, es_event **out, char *err, size_t errlen)
{
    *out = NULL;
    if (!entry || entry->type != REDIS_REPLY_ARRAY || entry->elements != 2 ||
        entry->element[0]->type != REDIS_REPLY_STRING) {
        snprintf(err, errlen, "malformed stream entry reply");
        return -1;
    }
    const char *id = entry->element[0]->str;
    const redisReply *f = entry->element[1];
    if (f->type != REDIS_REPLY_ARRAY || f->elements % 2) {
        snprintf(err, errlen, "entry %s: no fields (deleted entry?)", id);
        return -1;
    }
    const redisReply *type = NULL, *payload = NULL, *ts = NULL;
    for (size_t i = 0; i + 1 < f->elements; i += 2) {
        const redisReply *k = f->element[i], *v = f->element[i + 1];
        if (k->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING)
            continue;
        if (k->len == 4 && !memcmp(k->str, "type", 4))
            type = v;
        else if (k->len == 7 && !memcmp(k->str, "payload", 7))
            payload = v;
        else if (k->len == 2 && !memcmp(k->str, "ts", 2))
            ts = v;
    }
    if (!type || !payload || !ts) {
        snprintf(err, errlen, "entry %s: missing field %s", id, !type ? "type" : !payload ? "payload" : "ts");
        return -1;
    }
    return es_event_decode(id, type->str, type->len, payload->str, payload->len, ts->str, ts->len, out,
                           err, errlen);
}

const char *es_event_data_str(const es_event *ev, const char *key)
{
    json_t *v = ev && ev->data ? json_object_get(ev->data, key) : NULL;
    return json_is_string(v) ? json_string_value(v) : NULL;
}

void es_event_to_json(const es_event *ev, cm_buf *out)
{
    cm_buf_puts(out, "{\"id\":");
    cm_buf_put_json_str(out, ev->entry_id, strlen(ev->entry_id));
    cm_buf_puts(out, ",\"type\":");
    cm_buf_put_json_str(out, ev->type, strlen(ev->type));
    cm_buf_puts(out, ",\"payload\":");
    if (ev->data) /* decoded: the stored text is a JSON object */
        cm_buf_put(out, ev->payload, ev->payload_len);
    else          /* foreign: embed the raw text as a string */
        cm_buf_put_json_str(out, ev->payload, ev->payload_len);
    cm_buf_puts(out, ",\"ts\":");
    if (ts_valid(ev->ts, strlen(ev->ts)))
        cm_buf_puts(out, ev->ts);
    else
        cm_buf_put_json_str(out, ev->ts, strlen(ev->ts));
    cm_buf_putc(out, '}');
}

void es_encode(const es_new_event *ev, const char *aggregate, const char *aggregate_id,
               const char *correlation_id, const char *producer, es_encoded *enc)
{
    if (ev->event_id)
        snprintf(enc->event_id, sizeof enc->event_id, "%s", ev->event_id);
    else
        cm_uuid7(enc->event_id);
    double now = cm_wall_s();
    snprintf(enc->ts, sizeof enc->ts, "%.6f", now);
    cm_buf *h = &enc->head, *t = &enc->tail;
    cm_buf_reset(h);
    cm_buf_reset(t);
    cm_buf_puts(h, "{\"event_id\":\"");
    cm_buf_puts(h, enc->event_id);
    cm_buf_puts(h, "\",\"type\":");
    cm_buf_put_json_str(h, ev->type, strlen(ev->type));
    cm_buf_printf(h, ",\"schema\":%d,\"aggregate\":", ES_SCHEMA_VERSION);
    cm_buf_put_json_str(h, aggregate, strlen(aggregate));
    cm_buf_puts(h, ",\"aggregate_id\":");
    cm_buf_put_json_str(h, aggregate_id, strlen(aggregate_id));
    cm_buf_puts(h, ",\"seq\":");
    const char *corr = correlation_id ? correlation_id : aggregate_id;
    cm_buf_puts(t, ",\"correlation_id\":");
    cm_buf_put_json_str(t, corr, strlen(corr));
    cm_buf_puts(t, ",\"causation_id\":");
    if (ev->causation_id)
        cm_buf_put_json_str(t, ev->causation_id, strlen(ev->causation_id));
    else
        cm_buf_puts(t, "null");
    cm_buf_puts(t, ",\"producer\":");
    cm_buf_put_json_str(t, producer, strlen(producer));
    cm_buf_printf(t, ",\"emitted_at\":%s,\"data\":", enc->ts);
    char *data = ev->data ? json_dumps(ev->data, JSON_COMPACT | JSON_ENSURE_ASCII) : NULL;
    cm_buf_puts(t, data ? data : "{}");
    free(data);
    cm_buf_putc(t, '}');
}

void es_encoded_free(es_encoded *enc)
{
    cm_buf_free(&enc->head);
    cm_buf_free(&enc->tail);
}
