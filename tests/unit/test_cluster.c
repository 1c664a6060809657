/* test_cluster.c - unit tests of common/cluster.h that need no server: key
 * slots (CRC16 XMODEM and hash tags) and the redis-cluster:// URL form.
 * The expected slots marked "KEYSLOT" were read from redis-server 7.0.15's
 * CLUSTER KEYSLOT, not computed by the code under test. */
#include "common/cluster.h"
#include "common/redis.h"

#include <criterion/criterion.h>
#include <signal.h>
#include <string.h>

static int slot(const char *key)
{
    return cm_key_slot(key, strlen(key));
}

/* ---- cm_crc16 / cm_key_slot -------------------------------------------- */

Test(key_slot, crc16_matches_the_cluster_spec_check_value)
{
    /* The Redis Cluster spec: CRC16 of "123456789" is 0x31C3. */
    cr_assert_eq(cm_crc16("123456789", 9), 0x31C3);
    cr_assert_eq(slot("123456789"), 12739);   /* 0x31C3 mod 16384, KEYSLOT too */
    cr_assert_eq(cm_crc16("", 0), 0);
}

Test(key_slot, keys_sharing_a_hash_tag_share_a_slot)
{
    cr_assert_eq(slot("{user1000}.following"), 3443);   /* KEYSLOT */
    cr_assert_eq(slot("{user1000}.followers"), 3443);   /* KEYSLOT */
    cr_assert_eq(slot("{user1000}.following"), slot("user1000"));
}

Test(key_slot, hash_tag_edge_cases_follow_the_spec)
{
    /* Empty first tag: the whole key is hashed. */
    cr_assert_eq(slot("foo{}{bar}"), 8363);   /* KEYSLOT */
    cr_assert_eq(slot("foo{}{bar}"), cm_crc16("foo{}{bar}", 10) % 16384);
    /* From the first '{' to the first '}' after it: the tag is "{bar". */
    cr_assert_eq(slot("foo{{bar}}zap"), 4015);   /* KEYSLOT */
    cr_assert_eq(slot("foo{{bar}}zap"), slot("{bar"));
    /* Only the first tag counts. */
    cr_assert_eq(slot("foo{bar}{zap}"), 5061);   /* KEYSLOT */
    cr_assert_eq(slot("foo{bar}{zap}"), slot("bar"));
    /* No closing brace, lone braces: the whole key. */
    cr_assert_eq(slot("{"), 4092);    /* KEYSLOT */
    cr_assert_eq(slot("}"), 12090);   /* KEYSLOT */
    cr_assert_eq(slot("{}"), 15257);  /* KEYSLOT */
    cr_assert_eq(slot("x{y}"), 12222);   /* KEYSLOT */
    cr_assert_eq(slot("x{y}"), slot("y"));
}

Test(key_slot, empty_key_is_slot_0)
{
    cr_assert_eq(cm_key_slot("", 0), 0);   /* KEYSLOT "" */
}

Test(key_slot, known_slots_from_a_real_server)
{
    static const struct {
        const char *key;
        int slot;   /* CLUSTER KEYSLOT, redis-server 7.0.15 */
    } k[] = {
        {"foo", 12182},
        {"bar", 5061},
        {"a", 15495},
        {"hello world", 15332},
        {"ecommerce.checkout.events", 1962},
        {"{p7}ecommerce.checkout.events", 3821},
        {"chorus:product:sku-42", 6831},
        {"chorus:h:checkout:0190f8a2-7b1c-7abc-8def-0123456789ab", 2037},
    };
    for (size_t i = 0; i < sizeof k / sizeof k[0]; i++)
        cr_expect_eq(slot(k[i].key), k[i].slot, "%s: got %d, want %d", k[i].key, slot(k[i].key), k[i].slot);
}

Test(key_slot, binary_keys_hash_every_byte)
{
    /* A NUL inside the key is part of it: "a\0b" is not "a". */
    cr_assert_neq(cm_key_slot("a\0b", 3), cm_key_slot("a", 1));
    cr_assert_eq(cm_key_slot("{a\0}x", 5), cm_key_slot("a\0", 2));
}

Test(key_slot, argv_slot_is_the_slot_of_that_argument)
{
    cm_argv a = {0};
    cm_argv_adds(&a, "GET");
    cm_argv_adds(&a, "{user1000}.following");
    cr_assert_eq(cm_argv_slot(&a, 1), 3443);
    cr_assert_eq(cm_argv_slot(&a, 2), CM_SLOT_ANY);   /* no such argument */
    cm_argv_free(&a);
}

Test(key_slot, bare_multi_aborts_instead_of_being_split, .signal = SIGABRT)
{
    /* No server needed: the command is refused when queued. */
    cm_pipe *p = cm_pipe_new(NULL);
    cm_pipe_command(p, 0, "MULTI");
    cm_pipe_free(p);
}

/* ---- redis-cluster:// URLs --------------------------------------------- */

Test(cluster_url, seeds_are_read_in_order_with_default_port)
{
    cm_redis_url u;
    char err[256] = "";
    cr_assert_eq(cm_redis_url_parse("redis-cluster://10.0.0.1:7000,10.0.0.2,[::1]:7002", &u, err, sizeof err),
                 0, "%s", err);
    cr_assert(u.cluster);
    cr_assert_eq(u.nseeds, 3);
    cr_assert_str_eq(u.seeds[0].host, "10.0.0.1");
    cr_assert_eq(u.seeds[0].port, 7000);
    cr_assert_str_eq(u.seeds[1].host, "10.0.0.2");
    cr_assert_eq(u.seeds[1].port, 6379);
    cr_assert_str_eq(u.seeds[2].host, "::1");
    cr_assert_eq(u.seeds[2].port, 7002);
    cr_assert_str_eq(u.host, "10.0.0.1");   /* the first seed, also as host/port */
    cr_assert_eq(u.port, 7000);
    cr_assert_eq(u.db, 0);
    cr_assert_str_empty(u.password);
}

Test(cluster_url, user_and_password_apply_to_every_node)
{
    cm_redis_url u;
    char err[256] = "";
    cr_assert_eq(cm_redis_url_parse("redis-cluster://app:s3cr@t@h1:7000,h2:7001", &u, err, sizeof err), 0,
                 "%s", err);
    cr_assert_str_eq(u.user, "app");
    cr_assert_str_eq(u.password, "s3cr@t");   /* the last '@' ends the credentials */
    cr_assert_eq(u.nseeds, 2);
    cr_assert_str_eq(u.seeds[1].host, "h2");
    cr_assert_eq(cm_redis_url_parse("redis-cluster://:pw@h1:7000", &u, err, sizeof err), 0, "%s", err);
    cr_assert_str_empty(u.user);
    cr_assert_str_eq(u.password, "pw");
}

Test(cluster_url, plain_urls_are_not_cluster_urls)
{
    cm_redis_url u;
    char err[256] = "";
    cr_assert_eq(cm_redis_url_parse("redis://h:7000/1", &u, err, sizeof err), 0, "%s", err);
    cr_assert_not(u.cluster);
    cr_assert_eq(u.nseeds, 0);
    cr_assert_eq(cm_redis_url_parse("redis://bob:pw@h:7000", &u, err, sizeof err), 0, "%s", err);
    cr_assert_str_eq(u.user, "bob");
    cr_assert_str_eq(u.password, "pw");
}

Test(cluster_url, malformed_cluster_urls_are_rejected_with_a_reason)
{
    static const char *const bad[] = {
        "redis-cluster://",                 /* no seed */
        "redis-cluster://h1:7000,",         /* empty seed */
        "redis-cluster://,h1:7000",
        "redis-cluster://h1:7000,,h2:7001",
        "redis-cluster://h1:0",             /* port out of range */
        "redis-cluster://h1:7000,h2:x",
        "redis-cluster://h1:",              /* empty port */
        "redis-cluster://h1:7000/1",        /* a cluster has db 0 only */
        "redis-cluster://h1:7000?db=1",
        "redis-cluster://[::1",             /* unterminated ipv6 */
        "redis-cluster://[::1]x",
        "redis-cluster://a,b,c,d,e,f,g,h,i,j,k,l,m,n,o,p,q",   /* 17 seeds */
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        cm_redis_url u;
        char err[256] = "";
        cr_expect_eq(cm_redis_url_parse(bad[i], &u, err, sizeof err), -1, "accepted '%s'", bad[i]);
        cr_expect_str_not_empty(err, "no reason given for '%s'", bad[i]);
    }
}

Test(cluster_url, single_server_connect_refuses_a_cluster_url)
{
    char err[256] = "";
    redisContext *c = cm_redis_connect("redis-cluster://127.0.0.1:1", 100, err, sizeof err);
    cr_assert_null(c);
    cr_assert(strstr(err, "redis-cluster://"), "%s", err);
}

Test(cluster_url, unreachable_seeds_fail_open_without_printing_the_password)
{
    /* Port 1 on loopback: refused at once. */
    char err[512] = "";
    const char *url = "redis-cluster://:hunter2@127.0.0.1:1,127.0.0.1:2";
    cm_cluster *cc = cm_cluster_open(url, 200, err, sizeof err);
    cr_assert_null(cc);
    cr_assert(strstr(err, "slot map"), "%s", err);
    cr_assert(strstr(err, "127.0.0.1:"), "the error should name a node: %s", err);
    cr_assert_null(strstr(err, "hunter2"), "password leaked: %s", err);
    cc = cm_cluster_open("redis://:hunter2@127.0.0.1:1", 200, err, sizeof err);
    cr_assert_null(cc);
    cr_assert(strstr(err, "127.0.0.1:1"), "%s", err);
    cr_assert_null(strstr(err, "hunter2"), "password leaked: %s", err);
}
