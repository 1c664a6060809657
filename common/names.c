/* names.c - the one table of DESIGN.md names. */
#include "common/names.h"

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

cm_key cm_key_history(const char *aggregate, const char *id) { return keyf(CM_KEY_PREFIX "h:%s:%s", aggregate, id); }
cm_key cm_key_product(const char *product_id) { return keyf(CM_KEY_PREFIX "product:%s", product_id); }
cm_key cm_key_resv(const char *checkout_id) { return keyf(CM_KEY_PREFIX "resv:%s", checkout_id); }
cm_key cm_key_order(const char *order_id) { return keyf(CM_KEY_PREFIX "order:%s", order_id); }
cm_key cm_key_idem(const char *client_id, const char *idem_key)
{
    /* client ids hold no ':', so "<client>:<key>" cannot be read two ways */
    return keyf(CM_KEY_PREFIX "idem:%s:%s", client_id, idem_key);
}
cm_key cm_key_notify(const char *checkout_id) { return keyf(CM_KEY_PREFIX "notify:%s", checkout_id); }
cm_key cm_key_rm_checkout(const char *checkout_id) { return keyf(CM_KEY_RM_PREFIX "checkout:%s", checkout_id); }
cm_key cm_key_rm_client(const char *client_id) { return keyf(CM_KEY_RM_PREFIX "client:%s", client_id); }
cm_key cm_key_rm_client_checkouts(const char *client_id)
{
    return keyf(CM_KEY_CLIENT_CHECKOUTS "%s", client_id);
}
cm_key cm_key_rm_stock(const char *product_id) { return keyf(CM_KEY_RM_PREFIX "stock:%s", product_id); }
cm_key cm_key_dlq(const char *bus, const char *group) { return keyf("%s.dlq.%s", bus, group); }
cm_key cm_key_retry(const char *bus, const char *group) { return keyf("%s.retry.%s", bus, group); }

int cm_key_ok(const cm_key *k)
{
    return k->s[0] && strlen(k->s) < sizeof k->s - 1;
}
