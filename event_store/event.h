/* event.h - the event envelope of DESIGN.md ("Event envelope"): decoding a
 * stream entry into an es_event, and encoding a new event's payload.
 *
 * A stream entry has fields type, payload (JSON) and ts. Decoding validates
 * everything a foreign producer could get wrong and reports it in err; it
 * never crashes and never trusts a field it did not check. */
#ifndef ES_EVENT_H
#define ES_EVENT_H

#include <hiredis/hiredis.h>
#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "common/buf.h"
#include "common/names.h"

#define ES_SCHEMA_VERSION 1

typedef struct es_event {
    char *entry_id;            /* bus entry id, e.g. "1700000000000-0" */
    char *type;                /* event type (stream field and payload agree) */
    enum cm_event_type kind;   /* parsed type; CM_EV_UNKNOWN for foreign types */
    char *ts;                  /* stream field ts, as written ("1691234567.890") */
    char *payload;             /* payload JSON text exactly as stored */
    size_t payload_len;
    char *event_id;            /* UUID */
    int schema;
    char *aggregate;
    char *aggregate_id;
    int64_t seq;               /* >= 1 */
    char *correlation_id;
    char *causation_id;        /* NULL when absent or JSON null */
    char *producer;
    double emitted_at;
    json_t *data;              /* owned reference to the data object */
} es_event;

/* Decodes one event from its parts (lengths given, need not be NUL-terminated).
 * On success *out is a new event the caller frees with es_event_free and 0 is
 * returned; otherwise -1 with err naming the first problem found. */
int es_event_decode(const char *entry_id, const char *type, size_t type_len, const char *payload,
                    size_t payload_len, const char *ts, size_t ts_len, es_event **out, char *err,
                    size_t errlen) __attribute__((warn_unused_result));

/* Decodes an XRANGE/XREADGROUP entry reply [id, [field, value, ...]]. Unknown
 * extra fields are ignored; missing type/payload/ts fail. Same ownership. */
int es_event_from_entry(const redisReply *entry, es_event **out, char *err, size_t errlen)
    __attribute__((warn_unused_result));

void es_event_free(es_event *ev);   /* NULL ok */

/* Returns the string member `key` of ev->data, or NULL if absent/not a string. */
const char *es_event_data_str(const es_event *ev, const char *key);

/* Appends ev as DESIGN.md's answer shape {"id","type","payload":{...},"ts"}
 * (payload embedded as the JSON object it is, ts as a number). */
void es_event_to_json(const es_event *ev, cm_buf *out);

/* Appends "[e1,e2,...]" with each event as es_event_to_json writes it. */
void es_events_to_json(es_event *const *evs, size_t n, cm_buf *out);

/* A new event to append. */
typedef struct es_new_event {
    const char *event_id;      /* NULL: a fresh UUIDv7 is generated */
    const char *type;          /* DESIGN.md event type */
    const char *causation_id;  /* NULL for a saga's first event */
    const json_t *data;        /* borrowed; an object */
} es_new_event;

/* The payload of a new event, split around its seq so the store's script can
 * put the seq it assigns in between: payload = head .. seq .. tail
 * (es_append_args joins them itself when the expected version fixes the seq). */
typedef struct es_encoded {
    char event_id[37];
    char ts[32];               /* "%.6f" seconds */
    cm_buf head;               /* ends with "\"seq\":" */
    cm_buf tail;
} es_encoded;

/* Encodes ev for aggregate/id, saga correlation_id (NULL = aggregate_id) and
 * producer into enc (initialise with {0}; release with es_encoded_free). */
void es_encode(const es_new_event *ev, const char *aggregate, const char *aggregate_id,
               const char *correlation_id, const char *producer, es_encoded *enc);
void es_encoded_free(es_encoded *enc);

#endif
