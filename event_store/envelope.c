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
    char tmp[64];
    if (n == 0 || n >= sizeof tmp || s[0] == '-' || !cm_json_number(s, n))
        return false;
    if (!memchr(s, 'e', n) && !memchr(s, 'E', n))
        return true; /* under 64 digits: finite */
    memcpy(tmp, s, n);
    tmp[n] = '\0';
    return isfinite(strtod(tmp, NULL));
}

/* The fast path of decoding (the replay's hot loop: jansson's lexer reads a
 * byte at a time through a stream, ~15 ns a byte, and builds a json_t for
 * every member). It reads the envelope straight into the event and builds a
 * json_t only for data, but only for the JSON es_encode writes: the known
 * members (any order, each once), strings of printable ASCII without
 * escapes, plain numbers, shallow nesting, no duplicate keys. On anything
 * else, and on anything invalid, it gives up and the caller takes the
 * jansson path, which then decides (and words the error): the fast path
 * never rejects, so it can only ever accept what the slow path accepts, with
 * the same result. */
typedef struct fast_json {
    const char *p, *end;
    int depth;
} fast_json;

static json_t *fj_value(fast_json *f);

static void fj_ws(fast_json *f)
{
    while (f->p < f->end && (*f->p == ' ' || *f->p == '\n' || *f->p == '\r' || *f->p == '\t'))
        f->p++;
}

static bool fj_lit(fast_json *f, const char *lit, size_t n)
{
    if ((size_t)(f->end - f->p) < n || memcmp(f->p, lit, n) != 0)
        return false;
    f->p += n;
    return true;
}

/* A string without escapes or non-ASCII; *s points into the input. */
static bool fj_str(fast_json *f, const char **s, size_t *n)
{
    if (f->p >= f->end || *f->p != '"')
        return false;
    const char *b = ++f->p;
    for (; f->p < f->end; f->p++) {
        unsigned char c = (unsigned char)*f->p;
        if (c == '"') {
            *s = b;
            *n = (size_t)(f->p++ - b);
            return true;
        }
        if (c < 0x20 || c >= 0x7f || c == '\\')
            return false;
    }
    return false;
}

static bool fj_digits(fast_json *f)
{
    const char *b = f->p;
    while (f->p < f->end && *f->p >= '0' && *f->p <= '9')
        f->p++;
    return f->p > b;
}

/* Converts a plain decimal "[-]digits.digits" (no exponent) whose digits
 * form an integer below 2^53 with at most 22 after the point: the quotient of
 * two exact doubles, so correctly rounded, the same double strtod returns
 * (emitted_at takes strtod ~0.3 us otherwise). False when out of that range. */
static bool exact_decimal(const char *s, size_t n, double *out)
{
    static const double pow10[] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,  1e8,  1e9,  1e10, 1e11,
                                   1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};
    bool neg = n && *s == '-';
    uint64_t m = 0;
    int frac = -1, digits = 0;
    for (size_t i = neg; i < n; i++) {
        if (s[i] == '.') {
            frac = 0;
            continue;
        }
        if (s[i] < '0' || s[i] > '9' || ++digits > 17)
            return false;
        m = m * 10 + (uint64_t)(s[i] - '0');
        if (frac >= 0)
            frac++;
    }
    if (frac < 0 || frac > 22 || m >= (1ULL << 53))
        return false;
    double d = (double)m / pow10[frac];
    *out = neg ? -d : d;
    return true;
}

/* A JSON number: *real tells which of *iv / *dv holds it. Gives up on long
 * integers (jansson judges overflow) and non-finite reals. */
static bool fj_num(fast_json *f, bool *real, long long *iv, double *dv)
{
    const char *b = f->p;
    *real = false;
    if (f->p < f->end && *f->p == '-')
        f->p++;
    if (f->p < f->end && *f->p == '0')
        f->p++;
    else if (!fj_digits(f))
        return false;
    if (f->p < f->end && *f->p == '.') {
        f->p++;
        *real = true;
        if (!fj_digits(f))
            return false;
    }
    if (f->p < f->end && (*f->p == 'e' || *f->p == 'E')) {
        f->p++;
        *real = true;
        if (f->p < f->end && (*f->p == '+' || *f->p == '-'))
            f->p++;
        if (!fj_digits(f))
            return false;
    }
    char tmp[32], *end;
    size_t n = (size_t)(f->p - b);
    if (n >= sizeof tmp || (!*real && n > 18))
        return false;
    if (*real && exact_decimal(b, n, dv))
        return true;
    memcpy(tmp, b, n);
    tmp[n] = '\0';
    if (*real)
        *dv = strtod(tmp, &end);
    else
        *iv = strtoll(tmp, &end, 10);
    return end == tmp + n && (!*real || isfinite(*dv)); /* a locale's decimal comma: give up */
}

static json_t *fj_container(fast_json *f, bool obj)
{
    if (++f->depth > 32)
        return NULL;
    f->p++; /* '{' or '[' */
    json_t *c = obj ? json_object() : json_array();
    fj_ws(f);
    if (f->p < f->end && *f->p == (obj ? '}' : ']')) {
        f->p++;
        f->depth--;
        return c;
    }
    for (;;) {
        const char *k = NULL;
        size_t kn = 0;
        if (obj) {
            fj_ws(f);
            if (!fj_str(f, &k, &kn))
                break;
            fj_ws(f);
            if (!fj_lit(f, ":", 1))
                break;
        }
        json_t *v = fj_value(f);
        if (!v)
            break;
        if (obj && json_object_getn(c, k, kn)) {
            json_decref(v);
            break;
        }
        if (obj)
            json_object_setn_new_nocheck(c, k, kn, v);
        else
            json_array_append_new(c, v);
        fj_ws(f);
        if (fj_lit(f, ",", 1))
            continue;
        if (fj_lit(f, obj ? "}" : "]", 1)) {
            f->depth--;
            return c;
        }
        break;
    }
    json_decref(c);
    return NULL;
}

static json_t *fj_value(fast_json *f)
{
    fj_ws(f);
    if (f->p >= f->end)
        return NULL;
    switch (*f->p) {
    case '{':
        return fj_container(f, true);
    case '[':
        return fj_container(f, false);
    case '"': {
        const char *s;
        size_t n;
        return fj_str(f, &s, &n) ? json_stringn_nocheck(s, n) : NULL;
    }
    case 't':
        return fj_lit(f, "true", 4) ? json_true() : NULL;
    case 'f':
        return fj_lit(f, "false", 5) ? json_false() : NULL;
    case 'n':
        return fj_lit(f, "null", 4) ? json_null() : NULL;
    default: {
        bool real;
        long long iv;
        double dv;
        if (!fj_num(f, &real, &iv, &dv))
            return NULL;
        return real ? json_real(dv) : json_integer(iv);
    }
    }
}

/* The envelope's members, in the order of DESIGN.md. */
enum { M_EVENT_ID, M_TYPE, M_AGGREGATE, M_AGGREGATE_ID, M_CORRELATION_ID, M_CAUSATION_ID, M_PRODUCER,
       M_SCHEMA, M_SEQ, M_EMITTED_AT, M_DATA, M_COUNT };
static const char *const member_names[M_COUNT] = {
    "event_id", "type", "aggregate", "aggregate_id", "correlation_id", "causation_id", "producer",
    "schema", "seq", "emitted_at", "data"};

/* Fills ev's envelope from payload when it is plain (see above); ev->type is
 * the entry's type, already checked. Returns false, ev untouched, otherwise. */
static bool decode_fast(es_event *ev, const char *payload, size_t len)
{
    fast_json f = {payload, payload + len, 0};
    const char *sv[M_COUNT] = {0};
    size_t sl[M_COUNT] = {0};
    unsigned seen = 0;
    long long schema = 0, seq = 0;
    double emitted_at = 0;
    json_t *data = NULL;
    fj_ws(&f);
    if (!fj_lit(&f, "{", 1))
        return false;
    for (;;) {
        const char *k;
        size_t kn;
        int m = 0;
        fj_ws(&f);
        if (!fj_str(&f, &k, &kn))
            goto slow;
        while (m < M_COUNT && !(strlen(member_names[m]) == kn && !memcmp(member_names[m], k, kn)))
            m++;
        if (m == M_COUNT || seen & 1u << m)
            goto slow; /* a foreign member, or a duplicate */
        seen |= 1u << m;
        fj_ws(&f);
        if (!fj_lit(&f, ":", 1))
            goto slow;
        fj_ws(&f);
        bool real;
        long long iv;
        double dv;
        if (m == M_CAUSATION_ID && fj_lit(&f, "null", 4)) {
            /* null: causation_id stays NULL (seen still catches a duplicate) */
        } else if (m <= M_PRODUCER) {
            if (!fj_str(&f, &sv[m], &sl[m]) || sl[m] == 0 || sl[m] > 256)
                goto slow;
        } else if (m == M_DATA) {
            if (f.p >= f.end || *f.p != '{' || !(data = fj_value(&f)))
                goto slow;
        } else if (!fj_num(&f, &real, &iv, &dv)) {
            goto slow;
        } else if (m == M_EMITTED_AT) {
            emitted_at = real ? dv : (double)iv;
        } else if (real) {
            goto slow;
        } else {
            *(m == M_SCHEMA ? &schema : &seq) = iv;
        }
        fj_ws(&f);
        if (fj_lit(&f, ",", 1))
            continue;
        if (fj_lit(&f, "}", 1))
            break;
        goto slow;
    }
    fj_ws(&f);
    unsigned need = ((1u << M_COUNT) - 1) & ~(1u << M_CAUSATION_ID);
    char uuid[CM_UUID_LEN + 1] = "";
    if (sl[M_EVENT_ID] == CM_UUID_LEN)
        memcpy(uuid, sv[M_EVENT_ID], CM_UUID_LEN);
    if (f.p != f.end || (seen & need) != need || schema != ES_SCHEMA_VERSION || seq < 1 ||
        sl[M_TYPE] != strlen(ev->type) || memcmp(sv[M_TYPE], ev->type, sl[M_TYPE]) != 0 || !cm_uuid_valid(uuid))
        goto slow;
    ev->event_id = cm_xstrndup(sv[M_EVENT_ID], sl[M_EVENT_ID]);
    ev->aggregate = cm_xstrndup(sv[M_AGGREGATE], sl[M_AGGREGATE]);
    ev->aggregate_id = cm_xstrndup(sv[M_AGGREGATE_ID], sl[M_AGGREGATE_ID]);
    ev->correlation_id = cm_xstrndup(sv[M_CORRELATION_ID], sl[M_CORRELATION_ID]);
    ev->causation_id = sv[M_CAUSATION_ID] ? cm_xstrndup(sv[M_CAUSATION_ID], sl[M_CAUSATION_ID]) : NULL;
    ev->producer = cm_xstrndup(sv[M_PRODUCER], sl[M_PRODUCER]);
    ev->schema = ES_SCHEMA_VERSION;
    ev->seq = seq;
    ev->emitted_at = emitted_at;
    ev->data = data;
    return true;
slow:
    json_decref(data);
    return false;
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
    if (decode_fast(ev, payload, payload_len))
        goto done;
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
done:
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

void es_events_to_json(es_event *const *evs, size_t n, cm_buf *out)
{
    cm_buf_putc(out, '[');
    for (size_t i = 0; i < n; i++) {
        if (i)
            cm_buf_putc(out, ',');
        es_event_to_json(evs[i], out);
    }
    cm_buf_putc(out, ']');
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
