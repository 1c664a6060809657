/* names.h - every name of DESIGN.md spelled once: event types, failure
 * reasons, consumer groups, the bus stream, and the Redis keys chorus owns.
 *
 * Key layout (all chorus-owned keys start with "chorus:"):
 *   chorus:h:<aggregate>:<id>   list   an aggregate's history, one element per
 *                                      event: "<event_id>\n<bus id>\n<type>\n<ts>\n<payload>"
 *   chorus:products             set    ids of catalog products
 *   chorus:product:<id>         hash   name price_cents available reserved sold
 *   chorus:resv:<checkout_id>   hash   product_id -> qty, plus "_state" held|sold|released
 *   chorus:order:<order_id>     hash   order_id checkout_id client_id total_cents items created_at
 *   chorus:saga:started         zset   checkout_id scored by its CheckoutInitiated emitted_at (ms)
 *   chorus:rm:checkout:<id>     hash   read model: client_id status order_id reason updated_at seq
 *   chorus:rm:client:<id>       hash   read model: total_orders last_order_id last_checkout_id last_update_ts
 *   chorus:rm:client-checkouts:<id> zset read model: the client's newest checkout ids scored by
 *                                      CheckoutInitiated emitted_at (trimmed to CM_CLIENT_CHECKOUTS_KEEP)
 *   chorus:rm:stock:<id>        hash   read model: reserved sold released (counts from events)
 *   chorus:rm:checkpoint        string last bus entry id applied by the projection
 *   chorus:pj:rebuild           string lock held by a read-model rebuild (live projections wait)
 *   chorus:idem:<key>           string intake idempotency record (24 h)
 *   chorus:notify:log           stream one entry per notified checkout
 *   chorus:notify:<checkout_id> hash   notification state (webhook delivered or not)
 *   chorus:audit:log            stream hash-chained audit records
 *   chorus:audit:head           hash   hash + count of the last audit record
 *   chorus:audit:seen           hash   <aggregate>:<id> -> per-seq '1' marks of audited events
 *   <bus>.dlq.<group>           stream dead letters of a group
 *   <bus>.retry.<group>         stream entries re-delivered to one group
 */
#ifndef CM_NAMES_H
#define CM_NAMES_H

#define CM_BUS_STREAM_DEFAULT "ecommerce.checkout.events"
#define CM_KEY_PREFIX "chorus:"
#define CM_RM_CHANGED_CHANNEL "chorus:rm:checkout-changed"
#define CM_KEY_SAGA_STARTED "chorus:saga:started"  /* sagas not yet ended (timeout) */
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

#endif
