/* main.c - chorus-worker: one process per worker kind, selected by name.
 *
 *   chorus-worker <name> [--flag=value ...]
 *
 * where name is one of DESIGN.md's workers (stock-reservation, ...). */
#include "workers/wk.h"

#include <stdio.h>
#include <string.h>

static const wk_def *const k_defs[] = {
    &wk_stock_reservation, &wk_order_creation, &wk_stock_compensation,
    &wk_notification,      &wk_audit,          &wk_cqrs_projection,
};

static void usage(FILE *f)
{
    fprintf(f, "usage: chorus-worker <name> [--flag=value ...] (--help for settings)\nnames:");
    for (size_t i = 0; i < sizeof k_defs / sizeof k_defs[0]; i++)
        fprintf(f, " %s", cm_worker_names[k_defs[i]->id]);
    fprintf(f, " test\n");
}

int main(int argc, char **argv)
{
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    const wk_def *def = NULL;
    for (size_t i = 0; i < sizeof k_defs / sizeof k_defs[0]; i++)
        if (!strcmp(argv[1], cm_worker_names[k_defs[i]->id]))
            def = k_defs[i];
    if (!strcmp(argv[1], "test"))
        def = &wk_test_worker;
    if (!def) {
        fprintf(stderr, "chorus-worker: unknown worker '%s'\n", argv[1]);
        usage(stderr);
        return 2;
    }
    return wk_run(def, argc - 1, argv + 1);
}
