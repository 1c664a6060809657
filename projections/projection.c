/* projection.c - applying batches of checkout events to the read models.
 *
 * The C side turns each event into the typed fields the script needs
 * (projections/apply_script.h; JSON is parsed once, here, not in Lua) and
 * names every key the script will touch. The one key a batch cannot name by
 * itself is the stock view of what an OrderCreated sells: the units its
 * checkout's StockReserved held, read by the script from the checkout's
 * read model. So the projection remembers, per checkout, the products of the
 * StockReserved events it applied (a direct-mapped table of ITEMS_SLOTS
 * entries: bounded, a collision just forgets the older checkout) and passes
 * them with the OrderCreated. A checkout it does not remember (another copy
 * applied the reservation, a restart, a collision) costs one more script
 * call: the script asks for the keys and writes nothing the first time. */
#include "projections/projection.h"
#include "common/buf.h"
#include "common/ids.h"
#include "common/xmalloc.h"
#include "projections/apply_script.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHUNK 1024          /* events per script call (a batch larger than this is split) */
#define ITEMS_SLOTS 4096    /* checkouts whose reserved products are remembered */

typedef struct reserved_items {
    char *checkout_id;      /* NULL: empty slot */
    char *products;         /* product ids joined by ',' (ids hold no ',') */
} reserved_items;

struct pj_projection {
    pj_apply_call *call;
    reserved_items *items;  /* ITEMS_SLOTS */
    double *e2e;            /* result buffer handed out in pj_apply_res */
    size_t e2e_cap;
};

pj_projection *pj_projection_new(void)
{
    pj_projection *p = cm_xcalloc(1, sizeof *p);
    p->call = pj_apply_call_new();
    p->items = cm_xcalloc(ITEMS_SLOTS, sizeof *p->items);
    return p;
}

void pj_projection_free(pj_projection *p)
{
    if (!p)
        return;
    for (size_t i = 0; i < ITEMS_SLOTS; i++) {
        free(p->items[i].checkout_id);
        free(p->items[i].products);
    }
    free(p->items);
    pj_apply_call_free(p->call);
    free(p->e2e);
    free(p);
}

void pj_projection_set_lifetime(pj_projection *p, long long ttl_s)
{
    pj_apply_call_lifetime(p->call, ttl_s);
}

static reserved_items *items_slot(pj_projection *p, const char *checkout_id)
{
    uint32_t h = 2166136261u;
    for (const char *s = checkout_id; *s; s++)
        h = (h ^ (uint8_t)*s) * 16777619u;
    return &p->items[h % ITEMS_SLOTS];
}

/* Remembers the products a checkout's StockReserved held. */
static void items_remember(pj_projection *p, const char *checkout_id, const pj_apply_item *items, size_t n)
{
    reserved_items *slot = items_slot(p, checkout_id);
    free(slot->checkout_id);
    free(slot->products);
    cm_buf b = CM_BUF_INIT;
    for (size_t i = 0; i < n; i++)
        cm_buf_printf(&b, "%s%s", i ? "," : "", items[i].product_id);
    slot->checkout_id = cm_xstrdup(checkout_id);
    slot->products = b.data ? cm_buf_steal(&b) : cm_xstrdup("");
}

/* Passes the products remembered for checkout_id (none when forgotten). */
static void items_pass(pj_projection *p, const char *checkout_id)
{
    const reserved_items *slot = items_slot(p, checkout_id);
    if (!slot->checkout_id || strcmp(slot->checkout_id, checkout_id) != 0)
        return;
    char *list = cm_xstrdup(slot->products), *save = NULL;
    for (char *pid = strtok_r(list, ",", &save); pid; pid = strtok_r(NULL, ",", &save))
        if (pj_apply_call_add_product(p->call, pid) != PJ_OK)
            break;   /* remembered ids were validated: cannot happen */
    free(list);
}

/* A data string usable as an id in a key, or NULL (then it is not projected). */
static const char *data_id(const es_event *ev, const char *key)
{
    const char *s = es_event_data_str(ev, key);
    return s && cm_id_valid(s, strlen(s), 64) ? s : NULL;
}

/* data.items as typed lines, keeping only well-formed ones (*out: caller frees). */
static size_t event_items(const es_event *ev, pj_apply_item **out)
{
    json_t *items = json_object_get(ev->data, "items");
    size_t i, n = 0;
    json_t *it;
    *out = json_is_array(items) && json_array_size(items) ? cm_xcalloc(json_array_size(items), sizeof **out) : NULL;
    json_array_foreach(items, i, it) {
        json_t *pid = json_object_get(it, "product_id"), *qty = json_object_get(it, "quantity");
        if (!json_is_string(pid) || !cm_id_valid(json_string_value(pid), json_string_length(pid), 64) ||
            !json_is_integer(qty) || json_integer_value(qty) < 1 || json_integer_value(qty) > 1000000)
            continue;
        (*out)[n].product_id = json_string_value(pid);
        (*out)[n].quantity = (long long)json_integer_value(qty);
        n++;
    }
    return n;
}

/* Adds ev to the call, with the keys it will need. */
static int add_event(pj_projection *p, const es_event *ev, char *err, size_t errlen)
{
    pj_apply_event a = {
        .type = ev->kind,
        .checkout_id = ev->aggregate_id,
        .seq = ev->seq,
        .emitted_at = ev->emitted_at,
        .client_id = data_id(ev, "client_id"),
    };
    pj_apply_item *items = NULL;
    switch (ev->kind) {
    case CM_EV_ORDER_CREATED:
        a.value = data_id(ev, "order_id");
        items_pass(p, ev->aggregate_id);
        break;
    case CM_EV_CHECKOUT_SUCCEEDED:
        a.value = data_id(ev, "order_id");
        break;
    case CM_EV_CHECKOUT_FAILED:
        a.value = es_event_data_str(ev, "reason");
        break;
    case CM_EV_STOCK_RESERVED:
    case CM_EV_STOCK_RELEASED:
        a.nitems = event_items(ev, &items);
        a.items = items;
        if (ev->kind == CM_EV_STOCK_RESERVED)
            items_remember(p, ev->aggregate_id, items, a.nitems);
        break;
    default:
        break;
    }
    int rc = pj_apply_call_add_event(p->call, &a, err, errlen);
    free(items);
    return rc;
}

/* Runs the call; accumulates into res. */
static int call(pj_projection *p, redisContext *c, pj_apply_res *res, char *err, size_t errlen)
{
    pj_apply_reply r;
    int rc = pj_apply_call_run(p->call, c, &r, err, errlen);
    res->key_misses += r.needed;
    if (rc != PJ_OK)
        return rc;
    if (r.verdict == PJ_APPLY_BUSY)
        return PJ_EBUSY;
    res->applied += (size_t)r.applied;
    res->duplicates += (size_t)r.duplicates;
    for (size_t i = 0; i < r.ne2e; i++) {
        if (p->e2e_cap == res->ne2e) {
            p->e2e_cap = p->e2e_cap ? p->e2e_cap * 2 : 64;
            p->e2e = cm_xrealloc(p->e2e, p->e2e_cap * sizeof *p->e2e);
        }
        p->e2e[res->ne2e++] = r.e2e[i];
    }
    res->e2e = p->e2e;
    return PJ_OK;
}

/* The event's verdict before any Redis work. */
static unsigned char screen(const es_event *ev)
{
    if (!ev->aggregate || strcmp(ev->aggregate, PJ_CHECKOUT_AGGREGATE) != 0)
        return PJ_IGNORED;
    if (ev->seq > PJ_MAX_SEQ)
        return PJ_REJECTED;
    if (!ev->aggregate_id || !cm_id_valid(ev->aggregate_id, strlen(ev->aggregate_id), 64))
        return PJ_BAD_ID;
    return PJ_APPLIED;
}

int pj_projection_apply_from(pj_projection *p, redisContext *c, es_event *const *evs, size_t n, enum pj_mode mode,
                             enum pj_source source, unsigned char *verdicts, pj_apply_res *res, char *err,
                             size_t errlen)
{
    memset(res, 0, sizeof *res);
    res->e2e = p->e2e;
    if (!c)
        return PJ_EINVAL;
    /* a rebuild replays the bus: its ids always count */
    bool checkpoint = source == PJ_FROM_BUS || mode == PJ_REBUILD;
    int rc = PJ_OK;
    pj_apply_call_reset(p->call, mode);
    for (size_t i = 0; i < n && rc == PJ_OK; i++) {
        const es_event *ev = evs[i];
        unsigned char v = screen(ev);
        if (verdicts)
            verdicts[i] = v;
        if (v != PJ_APPLIED)
            continue;
        rc = add_event(p, ev, err, errlen);
        if (rc == PJ_OK && checkpoint && pj_apply_call_checkpoint(p->call, ev->entry_id) != PJ_OK) {
            snprintf(err, errlen, "entry id %.64s is not a stream entry id", ev->entry_id);
            rc = PJ_EINVAL;
        }
        if (rc == PJ_OK && pj_apply_call_nevents(p->call) == CHUNK) {
            rc = call(p, c, res, err, errlen);
            pj_apply_call_reset(p->call, mode);
        }
    }
    if (rc == PJ_OK && pj_apply_call_nevents(p->call))
        rc = call(p, c, res, err, errlen);
    return rc;
}

int pj_projection_apply(pj_projection *p, redisContext *c, const char *bus, es_event *const *evs, size_t n,
                        enum pj_mode mode, unsigned char *verdicts, pj_apply_res *res, char *err,
                        size_t errlen)
{
    if (!bus) {
        memset(res, 0, sizeof *res);
        res->e2e = p->e2e;
        return PJ_EINVAL;
    }
    return pj_projection_apply_from(p, c, evs, n, mode, PJ_FROM_BUS, verdicts, res, err, errlen);
}
