/* names.h - every name of DESIGN.md spelled once: event types, failure
 * reasons, consumer groups, the bus stream, and the Redis keys chorus owns.
 *
 * Key layout (all chorus-owned keys start with "chorus:"; every key name is
 * built by the cm_key_* functions below, nowhere else):
 *   chorus:h:<aggregate>:<id>   list   an aggregate's history, one element per
 *                                      event: "<event_id>\n<bus id>\n<type>\n<ts>\n<payload>"
 *   chorus:products             set    ids of catalog products
 *   chorus:product:<id>         hash   name price_cents available reserved sold
 *   chorus:resv:<checkout_id>   hash   "state" held|sold|released, "p:<product_id>" -> qty
 *   chorus:hold:{chorus:product:<id>}:<checkout_id>
 *                               string a checkout's line of one product, in the product's slot:
 *                                      "<state>:<qty>" (workers/lua/line.lua)
 *   chorus:order:<order_id>     hash   order_id checkout_id client_id total_cents items created_at
 *   chorus:saga:started         zset   checkout_id scored by its CheckoutInitiated emitted_at (ms)
 *   chorus:rm:checkout:<id>     hash   read model: client_id status order_id reason updated_at seq
 *   chorus:rm:client:<id>       hash   read model: total_orders last_order_id last_checkout_id last_update_ts
 *   chorus:rm:client-checkouts:<id> zset read model: the client's newest checkouts by emitted_at
 *   chorus:rm:stock:<id>        hash   read model: reserved sold released (counts from events)
 *   chorus:rm:checkpoint        string last bus entry id applied by the projection
 *   chorus:pj:rebuild           string lock held by a read-model rebuild (live projections wait)
 *   chorus:idem:<client>:<key>  string intake idempotency record (24 h), scoped to the client
 *   chorus:notify:log           stream one entry per notified checkout
 *   chorus:notify:<checkout_id> hash   notification state (webhook delivered or not)
 *   chorus:{audit}:log          stream hash-chained audit records (kept indefinitely)
 *   chorus:{audit}:head         hash   hash + count of the last audit record, key_id
 *   chorus:{audit}:seen:<aggregate>:<id>
 *                               string per-seq '1' marks of audited events (AUDIT_SEEN_TTL_S)
 *     (one hash tag: the audit script touches them together, one Cluster slot)
 *   <bus>.dlq.<group>           stream dead letters of a group
 *   <bus>.retry.<group>         stream entries re-delivered to one group
 *
 * Partitions (PARTITIONS, 1..1024, default 1): a checkout belongs to
 * partition p = CRC16(checkout_id) mod PARTITIONS (cm_partition_of). With
 * PARTITIONS=1 every name above is exactly as written. With N > 1 the bus of
 * partition p is "<bus>:{p<p>}" and each key of a checkout carries the same
 * hash tag right after its family, before any id (ids and idempotency keys
 * can never supply the first '{'):
 *   chorus:h:<aggregate>:{p<p>}:<id>   chorus:resv:{p<p>}:<checkout_id>
 *   chorus:order:{p<p>}:<order_id>     chorus:notify:{p<p>}:<checkout_id>
 *   chorus:rm:checkout:{p<p>}:<id>     chorus:idem:{p<p>}:<client>:<key>
 *   chorus:saga:started:{p<p>}         chorus:notify:log:{p<p>}
 *   chorus:rm:stock:{p<p>}:<product>   chorus:rm:client:{p<p>}:<client>
 *   chorus:rm:client-checkouts:{p<p>}:<client>
 *   chorus:rm:checkpoint:{p<p>}        chorus:pj:rebuild:{p<p>}
 *   <bus>:{p<p>}.dlq.<group>           <bus>:{p<p>}.retry.<group>
 * The idempotency record is found by (client, key) before the checkout id
 * is known, so its partition is CRC16("<client>\n<key>") mod N and the API
 * draws the new checkout's id inside that partition (cm_partition_id).
 * The stock, client and checkpoint read models are kept per partition (a
 * product's or client's counts from that partition's checkouts) so the
 * projection's apply script stays in one slot. Products and the audit keys
 * keep their own names (other slots). A line mark's hash tag is its product's
 * whole key name, so mark and product share a slot whatever PARTITIONS is.
 */
#ifndef CM_NAMES_H
#define CM_NAMES_H

#include <stddef.h>

#define CM_BUS_STREAM_DEFAULT "ecommerce.checkout.events"
#define CM_KEY_PREFIX "chorus:"
#define CM_RM_CHANGED_CHANNEL "chorus:rm:checkout-changed"
/* PUBLISHed (no subscriber) before each intake WAIT: a PUBLISH is replicated,
 * so the WAIT then covers every write the master made before it, including
 * an idempotency record written by another connection or API process */
#define CM_WAIT_MARK_CHANNEL "chorus:wait-mark"
#define CM_KEY_SAGA_STARTED "chorus:saga:started"  /* sagas not yet ended (timeout) */
#define CM_KEY_AUDIT_LOG "chorus:{audit}:log"
#define CM_KEY_AUDIT_HEAD "chorus:{audit}:head"
#define CM_KEY_AUDIT_SEEN_PREFIX "chorus:{audit}:seen:"  /* + "<aggregate>:<id>" */
/* the audit keys before the {audit} hash tag (renamed at the worker's start) */
#define CM_KEY_LEGACY_AUDIT_LOG CM_KEY_PREFIX "audit:log"
#define CM_KEY_LEGACY_AUDIT_HEAD CM_KEY_PREFIX "audit:head"
#define CM_KEY_LEGACY_AUDIT_SEEN CM_KEY_PREFIX "audit:seen"
/* A client's recent checkouts (zset; apply.lua spells it pfx .. "client-checkouts:"). */
#define CM_KEY_CLIENT_CHECKOUTS CM_KEY_PREFIX "rm:client-checkouts:"
#define CM_CLIENT_CHECKOUTS_KEEP 100   /* newest checkouts kept per client */

/* Event types of the saga, in DESIGN.md's order. */
enum cm_event_type {
    CM_EV_UNKNOWN = -1,
    CM_EV_CHECKOUT_INITIATED,
    CM_EV_STOCK_RESERVED,
    CM_EV_STOCK_RESERVATION_FAILED,
    CM_EV_ORDER_CREATED,
    CM_EV_ORDER_CREATION_FAILED,
    CM_EV_STOCK_RELEASED,
    CM_EV_CHECKOUT_SUCCEEDED,
    CM_EV_CHECKOUT_FAILED,
    CM_EV_CHECKOUT_TIMED_OUT,
    CM_EV_COUNT
};

extern const char *const cm_event_type_names[CM_EV_COUNT];
/* Returns the type named s, or CM_EV_UNKNOWN. */
enum cm_event_type cm_event_type_parse(const char *s);

/* CheckoutFailed reasons. */
#define CM_REASON_INSUFFICIENT_STOCK "insufficient_stock"
#define CM_REASON_ORDER_LIMIT "order_limit_exceeded"
#define CM_REASON_INJECTED_FAULT "injected_fault"
#define CM_REASON_TIMED_OUT "timed_out"

/* Consumer groups and worker names, index-aligned. */
enum cm_worker {
    CM_W_STOCK_RESERVATION,
    CM_W_ORDER_CREATION,
    CM_W_STOCK_COMPENSATION,
    CM_W_NOTIFICATION,
    CM_W_AUDIT,
    CM_W_CQRS_PROJECTION,
    CM_W_COUNT
};
extern const char *const cm_worker_names[CM_W_COUNT];  /* "stock-reservation", ... */
extern const char *const cm_group_names[CM_W_COUNT];   /* "choreo-reservation", ... */

/* Checkout read-model statuses. */
#define CM_STATUS_PENDING "PENDING"
#define CM_STATUS_STOCK_RESERVED "STOCK_RESERVED"
#define CM_STATUS_SUCCEEDED "SUCCEEDED"
#define CM_STATUS_FAILED "FAILED"

/* ---- Redis keys ----
 * A key name, by value (no allocation). Ids that go into keys are validated
 * by their callers (ids: 1..64 of [A-Za-z0-9_-]; idempotency keys: 1..128
 * printable ASCII); a name that would not fit is truncated, never
 * overflowed, and cm_key_ok tells. */
#define CM_KEY_MAX 320
typedef struct cm_key {
    char s[CM_KEY_MAX];
} cm_key;

#define CM_KEY_PRODUCTS CM_KEY_PREFIX "products"
#define CM_KEY_RM_CHECKPOINT CM_KEY_PREFIX "rm:checkpoint"
#define CM_KEY_RM_PREFIX CM_KEY_PREFIX "rm:"          /* every read-model key (a rebuild deletes them) */
#define CM_KEY_PJ_REBUILD CM_KEY_PREFIX "pj:rebuild"  /* outside rm: so a rebuild does not delete it */
#define CM_KEY_NOTIFY_LOG CM_KEY_PREFIX "notify:log"

/* ---- Partitions ---- */
#define CM_PARTITIONS_MAX 1024
/* Sets the process-wide partition count (1..CM_PARTITIONS_MAX), once at
 * start before any thread runs. Returns 0, or -1 when out of range. */
int cm_partitions_set(long long n) __attribute__((warn_unused_result));
/* The partition count (1 until cm_partitions_set). */
int cm_partitions(void);
/* The partition of an aggregate (checkout) id: CRC16-XMODEM(id) mod N. */
int cm_partition_of(const char *id);
/* The partition of an idempotency record: CRC16("<client>\n<key>") mod N. */
int cm_partition_of_idem(const char *client_id, const char *idem_key);
/* Writes a new UUIDv7 whose partition is p into out (N tries on average). */
void cm_partition_id(int p, char out[37]);
/* The bus of partition p: base itself when N == 1, else "<base>:{p<p>}". */
cm_key cm_key_bus(const char *base, int p);
/* Which partition's bus `stream` is (for base), or -1 when it is none. */
int cm_bus_partition(const char *base, const char *stream);
/* True when a bus base name can carry partition tags (no '{' or '}'). */
int cm_bus_base_ok(const char *base);
/* Applies PARTITIONS (n) for bus `base` at a daemon's start: 0, or -1 with
 * err naming what is wrong (range; a BUS_STREAM with braces when n > 1). */
int cm_partitions_configure(long long n, const char *base, char *err, size_t errlen)
    __attribute__((warn_unused_result));
#define CM_PARTITIONS_HELP \
    "partitions of the bus and of the checkouts' keys (1..1024; keep it fixed for the data's lifetime)"

cm_key cm_key_history(const char *aggregate, const char *id);
cm_key cm_key_product(const char *product_id);
cm_key cm_key_resv(const char *checkout_id);
/* The mark of checkout_id's line of product_id, in the product's slot:
 * "chorus:hold:{chorus:product:<product_id>}:<checkout_id>". A product id
 * holding '{' or '}' (never a valid id) gives a key cm_key_ok refuses. */
cm_key cm_key_hold(const char *product_id, const char *checkout_id);
cm_key cm_key_order(const char *checkout_id, const char *order_id);   /* in the checkout's partition */
cm_key cm_key_idem(const char *client_id, const char *idem_key);
cm_key cm_key_notify(const char *checkout_id);
cm_key cm_key_saga_started(int p);   /* CM_KEY_SAGA_STARTED when N == 1 */
cm_key cm_key_notify_log(int p);     /* CM_KEY_NOTIFY_LOG when N == 1 */
cm_key cm_key_rm_checkout(const char *checkout_id);
/* The projection's per-client and per-product models and its checkpoint
 * live in each partition p (the partition of the checkouts they count), so
 * one apply script touches one slot; readers sum or merge over partitions
 * (projections/read.h). */
cm_key cm_key_rm_client(int p, const char *client_id);
cm_key cm_key_rm_client_checkouts(int p, const char *client_id);
cm_key cm_key_rm_stock(int p, const char *product_id);
cm_key cm_key_rm_checkpoint(int p);   /* CM_KEY_RM_CHECKPOINT when N == 1 */
cm_key cm_key_pj_rebuild(int p);      /* CM_KEY_PJ_REBUILD when N == 1 */
cm_key cm_key_dlq(const char *bus, const char *group);     /* <bus>.dlq.<group> */
cm_key cm_key_retry(const char *bus, const char *group);   /* <bus>.retry.<group> */
/* True when k was built whole (not truncated). */
int cm_key_ok(const cm_key *k);

#endif
