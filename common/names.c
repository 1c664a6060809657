/* names.c - the one table of DESIGN.md names. */
#include "common/names.h"
#include "common/cluster.h"
#include "common/ids.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

const char *const cm_event_type_names[CM_EV_COUNT] = {
    "CheckoutInitiated", "StockReserved",     "StockReservationFailed",
    "OrderCreated",      "OrderCreationFailed", "StockReleased",
    "CheckoutSucceeded", "CheckoutFailed",    "CheckoutTimedOut",
};

const char *const cm_worker_names[CM_W_COUNT] = {
    "stock-reservation", "order-creation", "stock-compensation",
    "notification",      "audit",          "cqrs-projection",
};

const char *const cm_group_names[CM_W_COUNT] = {
    "choreo-reservation",  "choreo-order", "choreo-compensation",
    "choreo-notification", "choreo-audit", "choreo-cqrs",
};

enum cm_event_type cm_event_type_parse(const char *s)
{
    if (!s)
        return CM_EV_UNKNOWN;
    for (int i = 0; i < CM_EV_COUNT; i++)
        if (!strcmp(s, cm_event_type_names[i]))
            return (enum cm_event_type)i;
    return CM_EV_UNKNOWN;
}

/* ---- Redis keys: the only place key names are formatted ---- */


static cm_key keyf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static cm_key keyf(const char *fmt, ...)
{
    cm_key k;
    va_list ap;
    va_start(ap, fmt);
    if (vsnprintf(k.s, sizeof k.s, fmt, ap) < 0)   /* truncates, never overflows */
        k.s[0] = '\0';
    va_end(ap);
    return k;
}

/* ---- partitions ---- */

static int g_partitions = 1;

int cm_partitions_set(long long n)
{
    if (n < 1 || n > CM_PARTITIONS_MAX)
        return -1;
    g_partitions = (int)n;
    return 0;
}

int cm_partitions(void) { return g_partitions; }

int cm_partition_of(const char *id)
{
    if (g_partitions == 1 || !id)
        return 0;
    return (int)(cm_crc16(id, strlen(id)) % (unsigned)g_partitions);
}

int cm_partition_of_idem(const char *client_id, const char *idem_key)
{
    if (g_partitions == 1)
        return 0;
    char buf[CM_KEY_MAX];
    int n = snprintf(buf, sizeof buf, "%s\n%s", client_id ? client_id : "", idem_key ? idem_key : "");
    size_t len = n < 0 ? 0 : (size_t)n < sizeof buf ? (size_t)n : sizeof buf - 1;
    return (int)(cm_crc16(buf, len) % (unsigned)g_partitions);
}

void cm_partition_id(int p, char out[37])
{
    cm_uuid7(out);
    if (g_partitions == 1 || p < 0 || p >= g_partitions)
        return;
    /* redraw the random part (timestamp kept) until the id lands in p */
    char prev[CM_UUID_LEN + 1];
    while (cm_partition_of(out) != p) {
        memcpy(prev, out, sizeof prev);
        cm_uuid_derive(prev, "partition", out);
    }
}

/* The tag "{p<p>}:" of partition p, or "" when there is one partition. */
typedef struct tag {
    char s[16];
} tag;
static tag tag_of(int p)
{
    tag t = {""};
    if (g_partitions > 1)
        snprintf(t.s, sizeof t.s, "{p%d}:", p);
    return t;
}

cm_key cm_key_bus(const char *base, int p)
{
    if (g_partitions == 1)
        return keyf("%s", base);
    return keyf("%s:{p%d}", base, p);
}

int cm_bus_partition(const char *base, const char *stream)
{
    size_t n = strlen(base);
    if (strncmp(stream, base, n) != 0)
        return -1;
    if (g_partitions == 1)
        return stream[n] ? -1 : 0;
    int p = -1, used = 0;
    if (sscanf(stream + n, ":{p%d}%n", &p, &used) != 1 || stream[n + (size_t)used] || p < 0 ||
        p >= g_partitions || strcmp(cm_key_bus(base, p).s, stream) != 0)
        return -1;
    return p;
}

int cm_bus_base_ok(const char *base)
{
    return base && *base && !strpbrk(base, "{}");
}

int cm_partitions_configure(long long n, const char *base, char *err, size_t errlen)
{
    if (cm_partitions_set(n) != 0) {
        snprintf(err, errlen, "PARTITIONS is %lld; it must be 1..%d", n, CM_PARTITIONS_MAX);
        return -1;
    }
    if (n > 1 && !cm_bus_base_ok(base)) {
        snprintf(err, errlen, "BUS_STREAM must not contain '{' or '}' when PARTITIONS > 1 (the partition tag is added)");
        return -1;
    }
    return 0;
}

cm_key cm_key_history(const char *aggregate, const char *id)
{
    return keyf(CM_KEY_PREFIX "h:%s:%s%s", aggregate, tag_of(cm_partition_of(id)).s, id);
}
cm_key cm_key_product(const char *product_id) { return keyf(CM_KEY_PREFIX "product:%s", product_id); }
cm_key cm_key_resv(const char *checkout_id)
{
    return keyf(CM_KEY_PREFIX "resv:%s%s", tag_of(cm_partition_of(checkout_id)).s, checkout_id);
}
cm_key cm_key_hold(const char *product_id, const char *checkout_id)
{
    /* the tag is the product key's whole name: its CRC16, so its slot */
    cm_key k = keyf(CM_KEY_PREFIX "hold:{" CM_KEY_PREFIX "product:%s}:%s", product_id, checkout_id);
    if (strpbrk(product_id, "{}"))
        k.s[0] = '\0';
    return k;
}
cm_key cm_key_order(const char *checkout_id, const char *order_id)
{
    return keyf(CM_KEY_PREFIX "order:%s%s", tag_of(cm_partition_of(checkout_id)).s, order_id);
}
cm_key cm_key_idem(const char *client_id, const char *idem_key)
{
    /* client ids hold no ':', so "<client>:<key>" cannot be read two ways */
    return keyf(CM_KEY_PREFIX "idem:%s%s:%s", tag_of(cm_partition_of_idem(client_id, idem_key)).s, client_id,
                idem_key);
}
cm_key cm_key_notify(const char *checkout_id)
{
    return keyf(CM_KEY_PREFIX "notify:%s%s", tag_of(cm_partition_of(checkout_id)).s, checkout_id);
}
cm_key cm_key_saga_started(int p)
{
    return g_partitions == 1 ? keyf("%s", CM_KEY_SAGA_STARTED) : keyf("%s:{p%d}", CM_KEY_SAGA_STARTED, p);
}
cm_key cm_key_notify_log(int p)
{
    return g_partitions == 1 ? keyf("%s", CM_KEY_NOTIFY_LOG) : keyf("%s:{p%d}", CM_KEY_NOTIFY_LOG, p);
}
cm_key cm_key_rm_checkout(const char *checkout_id)
{
    return keyf(CM_KEY_RM_PREFIX "checkout:%s%s", tag_of(cm_partition_of(checkout_id)).s, checkout_id);
}
cm_key cm_key_rm_client(int p, const char *client_id)
{
    return keyf(CM_KEY_RM_PREFIX "client:%s%s", tag_of(p).s, client_id);
}
cm_key cm_key_rm_client_checkouts(int p, const char *client_id)
{
    return keyf(CM_KEY_CLIENT_CHECKOUTS "%s%s", tag_of(p).s, client_id);
}
cm_key cm_key_rm_stock(int p, const char *product_id)
{
    return keyf(CM_KEY_RM_PREFIX "stock:%s%s", tag_of(p).s, product_id);
}
cm_key cm_key_rm_checkpoint(int p)
{
    return g_partitions == 1 ? keyf("%s", CM_KEY_RM_CHECKPOINT) : keyf("%s:{p%d}", CM_KEY_RM_CHECKPOINT, p);
}
cm_key cm_key_pj_rebuild(int p)
{
    return g_partitions == 1 ? keyf("%s", CM_KEY_PJ_REBUILD) : keyf("%s:{p%d}", CM_KEY_PJ_REBUILD, p);
}
cm_key cm_key_dlq(const char *bus, const char *group) { return keyf("%s.dlq.%s", bus, group); }
cm_key cm_key_retry(const char *bus, const char *group) { return keyf("%s.retry.%s", bus, group); }

int cm_key_ok(const cm_key *k)
{
    return k->s[0] && strlen(k->s) < sizeof k->s - 1;
}
