/* names.c - the one table of DESIGN.md names. */
#include "common/names.h"

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
