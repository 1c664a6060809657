/* test_partitions.c - the partition function and the partitioned key layout
 * (common/names.h "Partitions").
 *
 *   stability_*      p = CRC16-XMODEM(id) mod N against vectors known apart
 *                    from this code: the CRC's check value ("123456789" ->
 *                    0x31C3) and Redis Cluster's own key slots (CLUSTER
 *                    KEYSLOT foo = 12182, bar = 5061, hello = 866; with N
 *                    dividing 16384 the partition is the slot mod N).
 *   distribution_*   40,000 fresh checkout ids over 16 partitions: every
 *                    partition within 10% of the mean.
 *   one_partition_*  PARTITIONS=1 spells every name exactly as before.
 *   layout_*         with N > 1 every key of a checkout (and its idempotency
 *                    record's, for an id drawn by cm_partition_id) is in the
 *                    Cluster slot of its partition's bus; the hash tag comes
 *                    before any id, so a '{' in an idempotency key cannot move it.
 *   configure_*      PARTITIONS out of 1..1024, or a BUS_STREAM with braces
 *                    when N > 1, is refused naming the setting. */
#include <criterion/criterion.h>

#include <stdio.h>
#include <string.h>

#include "common/cluster.h"
#include "common/ids.h"
#include "common/names.h"

#define BUS "ecommerce.checkout.events"

static void set_n(int n)
{
    cr_assert_eq(cm_partitions_set(n), 0, "cm_partitions_set(%d)", n);
}

Test(partitions, stability_against_the_crc_check_value)
{
    cr_expect_eq(cm_crc16("123456789", 9), 0x31C3);
    int ns[] = {2, 3, 4, 10, 1000, 1024};
    for (size_t i = 0; i < sizeof ns / sizeof ns[0]; i++) {
        set_n(ns[i]);
        cr_expect_eq(cm_partition_of("123456789"), 0x31C3 % ns[i], "N=%d", ns[i]);
    }
}

Test(partitions, stability_against_redis_cluster_key_slots)
{
    struct {
        const char *id;
        int slot;
    } v[] = {{"foo", 12182}, {"bar", 5061}, {"hello", 866}};
    int ns[] = {4, 16, 1024};
    for (size_t k = 0; k < sizeof ns / sizeof ns[0]; k++) {
        set_n(ns[k]);
        for (size_t i = 0; i < sizeof v / sizeof v[0]; i++)
            cr_expect_eq(cm_partition_of(v[i].id), v[i].slot % ns[k], "%s with N=%d", v[i].id, ns[k]);
    }
    set_n(4);
    cr_expect_eq(cm_partition_of("foo"), 2);
    cr_expect_eq(cm_partition_of("bar"), 1);
    cr_expect_str_eq(cm_key_history("checkout", "foo").s, "chorus:h:checkout:{p2}:foo");
    cr_expect_str_eq(cm_key_bus(BUS, 2).s, BUS ":{p2}");
}

Test(partitions, distribution_of_fresh_ids_is_even)
{
    enum { N = 16, IDS = 40000 };
    set_n(N);
    int count[N] = {0};
    for (int i = 0; i < IDS; i++) {
        char id[CM_UUID_LEN + 1];
        cm_uuid7(id);
        int p = cm_partition_of(id);
        cr_assert(p >= 0 && p < N);
        count[p]++;
    }
    for (int p = 0; p < N; p++)
        cr_expect(count[p] > IDS / N * 9 / 10 && count[p] < IDS / N * 11 / 10, "partition %d got %d of %d", p,
                  count[p], IDS);
}

Test(partitions, one_partition_keeps_every_name)
{
    set_n(1);
    cr_expect_eq(cm_partition_of("anything"), 0);
    cr_expect_str_eq(cm_key_bus(BUS, 0).s, BUS);
    cr_expect_str_eq(cm_key_history("checkout", "co1").s, "chorus:h:checkout:co1");
    cr_expect_str_eq(cm_key_resv("co1").s, "chorus:resv:co1");
    cr_expect_str_eq(cm_key_order("co1", "o1").s, "chorus:order:o1");
    cr_expect_str_eq(cm_key_idem("c1", "k1").s, "chorus:idem:c1:k1");
    cr_expect_str_eq(cm_key_notify("co1").s, "chorus:notify:co1");
    cr_expect_str_eq(cm_key_rm_checkout("co1").s, "chorus:rm:checkout:co1");
    cr_expect_str_eq(cm_key_saga_started(0).s, CM_KEY_SAGA_STARTED);
    cr_expect_str_eq(cm_key_notify_log(0).s, CM_KEY_NOTIFY_LOG);
    cr_expect_eq(cm_bus_partition(BUS, BUS), 0);
    cr_expect_eq(cm_bus_partition(BUS, BUS ":{p0}"), -1);
}

Test(partitions, layout_puts_a_checkouts_keys_in_its_bus_slot)
{
    set_n(8);
    for (int i = 0; i < 200; i++) {
        char co[CM_UUID_LEN + 1];
        cm_uuid7(co);
        int p = cm_partition_of(co);
        cm_key bus = cm_key_bus(BUS, p);
        int slot = cm_key_slot(bus.s, strlen(bus.s));
        cm_key keys[] = {cm_key_history("checkout", co), cm_key_resv(co),     cm_key_order(co, "o-1"),
                         cm_key_notify(co),              cm_key_rm_checkout(co), cm_key_saga_started(p),
                         cm_key_notify_log(p),           cm_key_dlq(bus.s, "choreo-order"),
                         cm_key_retry(bus.s, "choreo-order")};
        for (size_t k = 0; k < sizeof keys / sizeof keys[0]; k++)
            cr_assert_eq(cm_key_slot(keys[k].s, strlen(keys[k].s)), slot, "%s not in the slot of %s", keys[k].s,
                         bus.s);
        cr_assert_eq(cm_bus_partition(BUS, bus.s), p);
    }
    /* an idempotency key with braces: the record still follows its partition */
    const char *key = "{evil}key";
    int q = cm_partition_of_idem("client-1", key);
    char co[CM_UUID_LEN + 1];
    cm_partition_id(q, co);
    cr_assert(cm_uuid_valid(co));
    cr_assert_eq(cm_partition_of(co), q);
    cm_key idem = cm_key_idem("client-1", key), hist = cm_key_history("checkout", co);
    cr_expect_eq(cm_key_slot(idem.s, strlen(idem.s)), cm_key_slot(hist.s, strlen(hist.s)), "%s vs %s", idem.s,
                 hist.s);
    char want[128];
    snprintf(want, sizeof want, "chorus:idem:{p%d}:client-1:{evil}key", q);
    cr_expect_str_eq(idem.s, want);
    cr_expect_eq(cm_bus_partition(BUS, BUS ":{p8}"), -1, "past the last partition");
    cr_expect_eq(cm_bus_partition(BUS, BUS ":{p1}x"), -1);
    cr_expect_eq(cm_bus_partition(BUS, BUS), -1, "the unpartitioned name is no partition's bus");
}

Test(partitions, configure_refuses_bad_settings)
{
    char err[256] = "";
    cr_expect_eq(cm_partitions_configure(0, BUS, err, sizeof err), -1);
    cr_expect(strstr(err, "PARTITIONS"), "%s", err);
    cr_expect_eq(cm_partitions_configure(1025, BUS, err, sizeof err), -1);
    err[0] = '\0';
    cr_expect_eq(cm_partitions_configure(4, "bus{x}", err, sizeof err), -1);
    cr_expect(strstr(err, "BUS_STREAM"), "%s", err);
    cr_expect_eq(cm_partitions_configure(1, "bus{x}", err, sizeof err), 0, "one partition adds no tag");
    cr_expect_eq(cm_partitions_configure(1024, BUS, err, sizeof err), 0);
    cr_expect_eq(cm_partitions(), 1024);
}
