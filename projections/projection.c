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
 * call: the script asks for the keys and writes nothing the first time.
 *
 * The partition is the unit of atomicity: a batch's events are grouped by
 * their checkout's partition, one apply call per partition, and the calls
 * go out in one pipeline (cm_pipe: on a cluster each to its slot's master,
 * on one server all in one write). Every read model a call writes is that
 * partition's (the stock and client models and the checkpoint are kept per
 * partition; projections/read.h sums and merges them), so one code path
 * serves a single server and a cluster. A partition's call that fails or
 * finds a rebuild running fails the batch; the others may have applied,
 * which the batch's retry finds as duplicates. */
#include "projections/projection.h"
#include "common/buf.h"
#include "common/cluster.h"
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
    pj_apply_call **calls;  /* one per partition, made on first use */
    int ncalls;             /* cm_partitions() at creation */
    long long ttl_s;        /* READ_MODEL_TTL_S for calls made later */
    reserved_items *items;  /* ITEMS_SLOTS */
    double *e2e;            /* result buffer handed out in pj_apply_res */
    size_t e2e_cap;
};

pj_projection *pj_projection_new(void)
{
    pj_projection *p = cm_xcalloc(1, sizeof *p);
    p->ncalls = cm_partitions();
    p->calls = cm_xcalloc((size_t)p->ncalls, sizeof *p->calls);
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
    for (int i = 0; i < p->ncalls; i++)
        pj_apply_call_free(p->calls[i]);
    free(p->calls);
    free(p->e2e);
    free(p);
}

void pj_projection_set_lifetime(pj_projection *p, long long ttl_s)
{
    p->ttl_s = ttl_s;
    for (int i = 0; i < p->ncalls; i++)
        if (p->calls[i])
            pj_apply_call_lifetime(p->calls[i], ttl_s);
}

/* The call of partition part, made on first use (in mode, no events). */
static pj_apply_call *call_of(pj_projection *p, int part, enum pj_mode mode)
{
    if (!p->calls[part]) {
        p->calls[part] = pj_apply_call_new(part);
        pj_apply_call_lifetime(p->calls[part], p->ttl_s);
        pj_apply_call_reset(p->calls[part], mode);
    }
    return p->calls[part];
}

/* Forgets every call's events (keeps the calls and their scripts' SHAs). */
static void reset_all(pj_projection *p, enum pj_mode mode)
{
    for (int i = 0; i < p->ncalls; i++)
        if (p->calls[i])
            pj_apply_call_reset(p->calls[i], mode);
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
static void items_pass(pj_projection *p, pj_apply_call *call, const char *checkout_id)
{
    const reserved_items *slot = items_slot(p, checkout_id);
    if (!slot->checkout_id || strcmp(slot->checkout_id, checkout_id) != 0)
        return;
    char *list = cm_xstrdup(slot->products), *save = NULL;
    for (char *pid = strtok_r(list, ",", &save); pid; pid = strtok_r(NULL, ",", &save))
        if (pj_apply_call_add_product(call, pid) != PJ_OK)
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
static int add_event(pj_projection *p, pj_apply_call *call, const es_event *ev, char *err, size_t errlen)
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
        items_pass(p, call, ev->aggregate_id);
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
    int rc = pj_apply_call_add_event(call, &a, err, errlen);
    free(items);
    return rc;
}

/* Adds one call's DONE reply to res. */
static void accumulate(pj_projection *p, const pj_apply_reply *r, pj_apply_res *res)
{
    res->applied += (size_t)r->applied;
    res->duplicates += (size_t)r->duplicates;
    for (size_t i = 0; i < r->ne2e; i++) {
        if (p->e2e_cap == res->ne2e) {
            p->e2e_cap = p->e2e_cap ? p->e2e_cap * 2 : 64;
            p->e2e = cm_xrealloc(p->e2e, p->e2e_cap * sizeof *p->e2e);
        }
        p->e2e[res->ne2e++] = r->e2e[i];
    }
    res->e2e = p->e2e;
}

/* Sends every partition's call that has events, in one pipeline; the calls
 * that answered "need" (their keys now added) go once more. Accumulates into
 * res. Returns PJ_OK, PJ_EBUSY (a rebuild holds a partition's lock),
 * PJ_EREDIS with err (the first failure). */
static int flush(pj_projection *p, cm_cluster *cc, pj_apply_res *res, char *err, size_t errlen)
{
    int *todo = cm_xmalloc(sizeof *todo * (size_t)p->ncalls), n = 0;
    for (int i = 0; i < p->ncalls; i++)
        if (p->calls[i] && pj_apply_call_nevents(p->calls[i]))
            todo[n++] = i;
    cm_pipe *pipe = cm_pipe_new(cc);
    int rc = PJ_OK;
    bool busy = false;
    for (int round = 0; n > 0 && rc == PJ_OK; round++) {
        cm_pipe_reset(pipe);
        for (int k = 0; k < n && rc == PJ_OK; k++)
            rc = pj_apply_call_queue(p->calls[todo[k]], pipe, err, errlen);
        if (rc != PJ_OK)
            break;
        if (cm_pipe_exec(pipe) != 0) {
            snprintf(err, errlen, "redis: %s", cm_cluster_errstr(cc));
            rc = PJ_EREDIS;
            break;
        }
        int again = 0;
        for (int k = 0; k < n; k++) {
            pj_apply_reply r;
            char e[256];
            int prc = pj_apply_call_parse(p->calls[todo[k]], cm_pipe_take(pipe, (size_t)k), &r, e, sizeof e);
            res->key_misses += r.needed;
            if (prc == PJ_OK && r.verdict == PJ_APPLY_NEED && round > 0) {
                snprintf(e, sizeof e, "apply.lua (partition %d) still lacked %zu key(s) on its second call",
                         todo[k], r.needed);
                prc = PJ_EREDIS;
            }
            if (prc != PJ_OK) {
                if (rc == PJ_OK)
                    snprintf(err, errlen, "%s", e);
                rc = PJ_EREDIS;
            } else if (r.verdict == PJ_APPLY_BUSY) {
                busy = true;
            } else if (r.verdict == PJ_APPLY_NEED) {
                todo[again++] = todo[k];
            } else {
                accumulate(p, &r, res);
            }
        }
        n = again;
    }
    cm_pipe_free(pipe);
    free(todo);
    if (rc == PJ_OK && busy) {
        snprintf(err, errlen, "a read-model rebuild is running");
        rc = PJ_EBUSY;
    }
    return rc;
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

int pj_projection_apply_from(pj_projection *p, cm_cluster *cc, es_event *const *evs, size_t n, enum pj_mode mode,
                             enum pj_source source, unsigned char *verdicts, pj_apply_res *res, char *err,
                             size_t errlen)
{
    memset(res, 0, sizeof *res);
    res->e2e = p->e2e;
    if (!cc)
        return PJ_EINVAL;
    if (p->ncalls != cm_partitions()) {
        snprintf(err, errlen, "PARTITIONS changed after the projection was made");
        return PJ_EINVAL;
    }
    /* a rebuild replays the bus: its ids always count */
    bool checkpoint = source == PJ_FROM_BUS || mode == PJ_REBUILD;
    int rc = PJ_OK;
    reset_all(p, mode);
    for (size_t i = 0; i < n && rc == PJ_OK; i++) {
        const es_event *ev = evs[i];
        unsigned char v = screen(ev);
        if (verdicts)
            verdicts[i] = v;
        if (v != PJ_APPLIED)
            continue;
        pj_apply_call *call = call_of(p, cm_partition_of(ev->aggregate_id), mode);
        rc = add_event(p, call, ev, err, errlen);
        /* a partition's events come from its own bus: its checkpoint */
        if (rc == PJ_OK && checkpoint && pj_apply_call_checkpoint(call, ev->entry_id) != PJ_OK) {
            snprintf(err, errlen, "entry id %.64s is not a stream entry id", ev->entry_id);
            rc = PJ_EINVAL;
        }
        if (rc == PJ_OK && pj_apply_call_nevents(call) == CHUNK) {
            rc = flush(p, cc, res, err, errlen);
            reset_all(p, mode);
        }
    }
    if (rc == PJ_OK)
        rc = flush(p, cc, res, err, errlen);
    return rc;
}

int pj_projection_apply(pj_projection *p, cm_cluster *cc, const char *bus, es_event *const *evs, size_t n,
                        enum pj_mode mode, unsigned char *verdicts, pj_apply_res *res, char *err,
                        size_t errlen)
{
    if (!bus) {
        memset(res, 0, sizeof *res);
        res->e2e = p->e2e;
        return PJ_EINVAL;
    }
    return pj_projection_apply_from(p, cc, evs, n, mode, PJ_FROM_BUS, verdicts, res, err, errlen);
}
