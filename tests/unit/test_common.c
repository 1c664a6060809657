/* test_common.c - unit tests of common/: Redis URLs, the settings loader,
 * ids, JSON string escaping and the metrics registry. Pure code, no Redis.
 * Criterion runs every test in its own process, so setenv and the
 * process-wide metrics registry do not leak from one test to the next. */
#include "common/buf.h"
#include "common/config.h"
#include "common/ids.h"
#include "common/metrics.h"
#include "common/names.h"
#include "common/redis.h"

#include <criterion/criterion.h>
#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---- cm_redis_url_parse ------------------------------------------------ */

Test(redis_url, plain_host_gets_default_port_and_db_0)
{
    cm_redis_url u;
    char err[256] = "";
    cr_assert_eq(cm_redis_url_parse("redis://localhost", &u, err, sizeof err), 0, "%s", err);
    cr_assert_str_eq(u.host, "localhost");
    cr_assert_eq(u.port, 6379);
    cr_assert_eq(u.db, 0);
    cr_assert_str_empty(u.password);
    cr_assert_str_empty(u.path);
}

Test(redis_url, password_port_and_db_are_all_read)
{
    cm_redis_url u;
    char err[256] = "";
    cr_assert_eq(cm_redis_url_parse("redis://:s3cret@10.1.2.3:6380/2", &u, err, sizeof err), 0, "%s", err);
    cr_assert_str_eq(u.host, "10.1.2.3");
    cr_assert_eq(u.port, 6380);
    cr_assert_eq(u.db, 2);
    cr_assert_str_eq(u.password, "s3cret");

    cr_assert_eq(cm_redis_url_parse("redis://user:pw@cache:7000/0", &u, err, sizeof err), 0, "%s", err);
    cr_assert_str_eq(u.host, "cache");
    cr_assert_str_eq(u.password, "pw");
    cr_assert_eq(u.port, 7000);
}

Test(redis_url, bracketed_ipv6_host_keeps_its_colons)
{
    cm_redis_url u;
    char err[256] = "";
    cr_assert_eq(cm_redis_url_parse("redis://[::1]:7001/3", &u, err, sizeof err), 0, "%s", err);
    cr_assert_str_eq(u.host, "::1");
    cr_assert_eq(u.port, 7001);
    cr_assert_eq(u.db, 3);
}

Test(redis_url, unix_socket_forms_give_a_path_and_db)
{
    cm_redis_url u;
    char err[256] = "";
    cr_assert_eq(cm_redis_url_parse("unix:/run/redis.sock?db=4", &u, err, sizeof err), 0, "%s", err);
    cr_assert_str_eq(u.path, "/run/redis.sock");
    cr_assert_str_empty(u.host);
    cr_assert_eq(u.db, 4);
    cr_assert_eq(cm_redis_url_parse("unix:///tmp/r.sock", &u, err, sizeof err), 0, "%s", err);
    cr_assert_str_eq(u.path, "/tmp/r.sock");
    cr_assert_eq(u.db, 0);
}

Test(redis_url, malformed_urls_are_rejected_with_a_reason)
{
    static const char *const bad[] = {
        "",                         /* empty */
        "http://localhost:6379",    /* wrong scheme */
        "localhost:6379",           /* no scheme */
        "redis://",                 /* no host */
        "redis://:6379",            /* no host before the port */
        "redis://h:0",              /* port out of range */
        "redis://h:65536",
        "redis://h:12ab",           /* port not a number */
        "redis://h:6379/x",         /* db not a number */
        "redis://h:6379/-1",
        "redis://[::1",             /* unterminated ipv6 */
        "unix:relative.sock",       /* not absolute */
        "unix:",
        "unix:/tmp/r.sock?foo=1",   /* unknown query */
        "unix:/tmp/r.sock?db=",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        cm_redis_url u;
        char err[256] = "";
        cr_expect_eq(cm_redis_url_parse(bad[i], &u, err, sizeof err), -1, "accepted '%s'", bad[i]);
        cr_expect_str_not_empty(err, "no reason given for '%s'", bad[i]);
    }
    char err[256] = "";
    cm_redis_url u;
    cr_assert_eq(cm_redis_url_parse(NULL, &u, err, sizeof err), -1);
}

/* ---- cm_config_load ---------------------------------------------------- */

static int64_t g_limit;
static double g_rate;
static char *g_url;
static bool g_verbose;

static const cm_opt k_opts[] = {
    {.name = "limit", .env = "TC_LIMIT", .type = CM_OPT_INT, .ptr = &g_limit, .def = "500",
     .min = 1, .max = 1000, .help = "an integer in a range"},
    {.name = "rate", .env = "TC_RATE", .type = CM_OPT_DOUBLE, .ptr = &g_rate, .def = "0",
     .min = 0, .max = 1, .help = "a fraction"},
    {.name = "redis-url", .env = "TC_REDIS_URL", .type = CM_OPT_STR, .ptr = &g_url,
     .def = "redis://127.0.0.1:6379", .min = 1, .max = 0, .help = "a string"},
    {.name = "verbose", .env = "TC_VERBOSE", .type = CM_OPT_BOOL, .ptr = &g_verbose, .def = "false",
     .min = 1, .max = 0, .help = "a switch"},
    {0},
};

static int load(int argc, char **argv, char *err, size_t errlen)
{
    return cm_config_load(k_opts, argc, argv, err, errlen);
}

Test(config, defaults_apply_when_nothing_is_set)
{
    char *argv[] = {"prog", NULL};
    char err[256] = "";
    cr_assert_eq(load(1, argv, err, sizeof err), 0, "%s", err);
    cr_assert_eq(g_limit, 500);
    cr_assert_float_eq(g_rate, 0.0, 1e-12);
    cr_assert_str_eq(g_url, "redis://127.0.0.1:6379");
    cr_assert_not(g_verbose);
    cm_config_free(k_opts);
    cr_assert_null(g_url);
}

Test(config, env_overrides_default_and_flags_override_env)
{
    setenv("TC_LIMIT", "42", 1);
    setenv("TC_RATE", "0.25", 1);
    setenv("TC_REDIS_URL", "redis://from-env:1", 1);
    setenv("TC_VERBOSE", "yes", 1);
    char *argv0[] = {"prog", NULL};
    char err[256] = "";
    cr_assert_eq(load(1, argv0, err, sizeof err), 0, "%s", err);
    cr_assert_eq(g_limit, 42);
    cr_assert_float_eq(g_rate, 0.25, 1e-12);
    cr_assert_str_eq(g_url, "redis://from-env:1");
    cr_assert(g_verbose);
    cm_config_free(k_opts);

    char *argv[] = {"prog", "--limit=7", "--redis-url", "redis://from-flag:2", "--rate=1", NULL};
    cr_assert_eq(load(5, argv, err, sizeof err), 0, "%s", err);
    cr_assert_eq(g_limit, 7);
    cr_assert_float_eq(g_rate, 1.0, 1e-12);
    cr_assert_str_eq(g_url, "redis://from-flag:2");
    cr_assert(g_verbose, "env value kept where no flag was given");
    cm_config_free(k_opts);
}

Test(config, bare_boolean_flag_means_true)
{
    setenv("TC_VERBOSE", "off", 1);
    char *argv[] = {"prog", "--verbose", NULL};
    char err[256] = "";
    cr_assert_eq(load(2, argv, err, sizeof err), 0, "%s", err);
    cr_assert(g_verbose);
    cm_config_free(k_opts);
}

Test(config, out_of_range_env_value_is_an_error_naming_the_variable)
{
    setenv("TC_LIMIT", "1001", 1);
    char *argv[] = {"prog", NULL};
    char err[256] = "";
    cr_assert_eq(load(1, argv, err, sizeof err), -1);
    cr_assert(strstr(err, "TC_LIMIT") != NULL, "err: %s", err);
    cr_assert(strstr(err, "1..1000") != NULL, "err should state the range: %s", err);
    cm_config_free(k_opts);
}

Test(config, out_of_range_flag_is_an_error_naming_the_flag)
{
    char *argv[] = {"prog", "--rate=1.5", NULL};
    char err[256] = "";
    cr_assert_eq(load(2, argv, err, sizeof err), -1);
    cr_assert(strstr(err, "--rate") != NULL, "err: %s", err);
    cm_config_free(k_opts);
}

Test(config, malformed_values_are_errors_not_guesses)
{
    static const char *const cases[][2] = {
        {"TC_LIMIT", "12abc"}, {"TC_LIMIT", ""}, {"TC_LIMIT", "0"},
        {"TC_RATE", "nan"},    {"TC_RATE", "x"}, {"TC_VERBOSE", "maybe"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        unsetenv("TC_LIMIT");
        unsetenv("TC_RATE");
        unsetenv("TC_VERBOSE");
        setenv(cases[i][0], cases[i][1], 1);
        char *argv[] = {"prog", NULL};
        char err[256] = "";
        cr_expect_eq(load(1, argv, err, sizeof err), -1, "%s='%s' accepted", cases[i][0], cases[i][1]);
        cr_expect(strstr(err, cases[i][0]) != NULL, "err does not name %s: %s", cases[i][0], err);
        cm_config_free(k_opts);
    }
}

Test(config, unknown_flags_and_missing_values_are_errors)
{
    char err[256] = "";
    char *a1[] = {"prog", "--nope=1", NULL};
    cr_assert_eq(load(2, a1, err, sizeof err), -1);
    cr_assert(strstr(err, "--nope") != NULL, "err: %s", err);
    cm_config_free(k_opts);

    char *a2[] = {"prog", "--limit", NULL};
    cr_assert_eq(load(2, a2, err, sizeof err), -1);
    cr_assert(strstr(err, "--limit") != NULL, "err: %s", err);
    cm_config_free(k_opts);

    char *a3[] = {"prog", "positional", NULL};
    cr_assert_eq(load(2, a3, err, sizeof err), -1);
    cm_config_free(k_opts);
}

/* ---- ids --------------------------------------------------------------- */

static long long hex_prefix_ms(const char *id)
{
    char hex[13];
    memcpy(hex, id, 8);
    memcpy(hex + 8, id + 9, 4);
    hex[12] = '\0';
    return strtoll(hex, NULL, 16);
}

Test(ids, uuid7_is_canonical_version_7_variant_10)
{
    char id[CM_UUID_LEN + 1];
    cm_uuid7(id);
    cr_assert_eq(strlen(id), 36);
    for (int i = 0; i < 36; i++) {
        if (i == 8 || i == 13 || i == 18 || i == 23)
            cr_assert_eq(id[i], '-', "%s", id);
        else
            cr_assert(strchr("0123456789abcdef", id[i]) != NULL, "not lower hex at %d: %s", i, id);
    }
    cr_assert_eq(id[14], '7', "version nibble: %s", id);
    cr_assert(strchr("89ab", id[19]) != NULL, "variant bits: %s", id);
    cr_assert(cm_uuid_valid(id));
}

Test(ids, uuid7_carries_the_current_unix_time_in_ms)
{
    long long before = (long long)time(NULL) * 1000;
    char id[CM_UUID_LEN + 1];
    cm_uuid7(id);
    long long after = (long long)time(NULL) * 1000 + 1000;
    long long ms = hex_prefix_ms(id);
    cr_assert(ms >= before && ms <= after, "%s -> %lld not in [%lld, %lld]", id, ms, before, after);
}

Test(ids, uuid7_from_one_thread_is_strictly_increasing)
{
    enum { N = 20000 };   /* many ids per millisecond: exercises the counter */
    char prev[CM_UUID_LEN + 1], cur[CM_UUID_LEN + 1];
    cm_uuid7(prev);
    for (int i = 0; i < N; i++) {
        cm_uuid7(cur);
        cr_assert(strcmp(prev, cur) < 0, "not increasing at %d: %s then %s", i, prev, cur);
        cr_assert_eq(cur[14], '7');
        memcpy(prev, cur, sizeof cur);
    }
}

Test(ids, derived_id_is_deterministic_and_depends_on_both_inputs)
{
    const char *parent = "0190f8a2-7b3c-7def-8123-456789abcdef";
    char a[CM_UUID_LEN + 1], b[CM_UUID_LEN + 1], c[CM_UUID_LEN + 1], d[CM_UUID_LEN + 1];
    cm_uuid_derive(parent, "StockReserved", a);
    cm_uuid_derive(parent, "StockReserved", b);
    cm_uuid_derive(parent, "StockReservationFailed", c);
    cm_uuid_derive("0190f8a2-7b3c-7def-8123-456789abcdee", "StockReserved", d);
    cr_assert_str_eq(a, b);
    cr_assert_str_neq(a, c);
    cr_assert_str_neq(a, d);
    cr_assert_str_neq(a, parent);
    cr_assert(cm_uuid_valid(a));
    cr_assert_eq(a[14], '7', "%s", a);
    cr_assert(strchr("89ab", a[19]) != NULL, "%s", a);
    cr_assert_eq(strncmp(a, parent, 13), 0, "keeps the parent's timestamp: %s vs %s", a, parent);
}

Test(ids, derived_id_of_a_non_uuid_parent_is_still_a_valid_uuid)
{
    char a[CM_UUID_LEN + 1], b[CM_UUID_LEN + 1];
    cm_uuid_derive("not-a-uuid", "Tag", a);
    cm_uuid_derive("not-a-uuid", "Tag", b);
    cr_assert(cm_uuid_valid(a), "%s", a);
    cr_assert_str_eq(a, b);
}

Test(ids, tag_boundary_is_unambiguous)
{
    /* ("ab","c") and ("a","bc") must not collide: the inputs are separated. */
    char a[CM_UUID_LEN + 1], b[CM_UUID_LEN + 1];
    cm_uuid_derive("ab", "c", a);
    cm_uuid_derive("a", "bc", b);
    cr_assert_str_neq(a, b);
}

Test(ids, uuid_valid_accepts_canonical_forms_only)
{
    cr_assert(cm_uuid_valid("0190f8a2-7b3c-7def-8123-456789abcdef"));
    cr_assert(cm_uuid_valid("0190F8A2-7B3C-7DEF-8123-456789ABCDEF"));
    cr_assert_not(cm_uuid_valid(NULL));
    cr_assert_not(cm_uuid_valid(""));
    cr_assert_not(cm_uuid_valid("0190f8a27b3c7def8123456789abcdef"));
    cr_assert_not(cm_uuid_valid("0190f8a2-7b3c-7def-8123-456789abcde"));
    cr_assert_not(cm_uuid_valid("0190f8a2-7b3c-7def-8123-456789abcdeff"));
    cr_assert_not(cm_uuid_valid("0190f8a2-7b3c-7def-8123_456789abcdef"));
    cr_assert_not(cm_uuid_valid("0190f8a2-7b3c-7def-8123-456789abcdeg"));
}

Test(ids, id_valid_allows_only_the_design_charset_and_length)
{
    char max64[65], max65[66];
    memset(max64, 'a', 64);
    max64[64] = '\0';
    memset(max65, 'a', 65);
    max65[65] = '\0';
    cr_assert(cm_id_valid("client_42-X", 11, 64));
    cr_assert(cm_id_valid(max64, 64, 64));
    cr_assert_not(cm_id_valid(max65, 65, 64));
    cr_assert_not(cm_id_valid("", 0, 64));
    cr_assert_not(cm_id_valid(NULL, 3, 64));
    static const char *const bad[] = {"a b", "a/b", "a.b", "a:b", "caf\xc3\xa9", "a\"b", "a\nb"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        cr_expect_not(cm_id_valid(bad[i], strlen(bad[i]), 64), "accepted '%s'", bad[i]);
    cr_assert_not(cm_id_valid("ab\0c", 4, 64), "embedded NUL accepted");
    cr_assert(cm_id_valid("ab\0c", 2, 64), "only n bytes are checked");
}

/* ---- cm_buf_put_json_str ----------------------------------------------- */

static char *json_str(const char *s, size_t n)
{
    cm_buf b = CM_BUF_INIT;
    cm_buf_put_json_str(&b, s, n);
    return cm_buf_steal(&b);
}

Test(json_str, quotes_backslashes_and_controls_are_escaped)
{
    const char in[] = "a\"b\\c\nd\te\rf\x01g\x1fh/";
    char *out = json_str(in, sizeof in - 1);
    cr_assert_str_eq(out, "\"a\\\"b\\\\c\\nd\\te\\rf\\u0001g\\u001fh/\"");
    free(out);
}

Test(json_str, embedded_nul_is_escaped_not_truncated)
{
    char *out = json_str("a\0b", 3);
    cr_assert_str_eq(out, "\"a\\u0000b\"");
    free(out);
}

Test(json_str, valid_utf8_passes_through_unchanged)
{
    const char in[] = "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80";   /* café € 😀 */
    char *out = json_str(in, sizeof in - 1);
    char want[64];
    snprintf(want, sizeof want, "\"%s\"", in);
    cr_assert_str_eq(out, want);
    free(out);
}

Test(json_str, invalid_utf8_becomes_replacement_characters)
{
    static const struct { const char *in; size_t n; const char *want; } cases[] = {
        {"\xff", 1, "\"\\ufffd\""},                            /* never valid */
        {"a\x80z", 3, "\"a\\ufffdz\""},                        /* lone continuation */
        {"\xe2\x82", 2, "\"\\ufffd\\ufffd\""},                 /* truncated 3-byte */
        {"\xc0\xaf", 2, "\"\\ufffd\\ufffd\""},                 /* overlong '/' */
        {"\xed\xa0\x80", 3, "\"\\ufffd\\ufffd\\ufffd\""},      /* UTF-16 surrogate */
        {"\xf4\x90\x80\x80", 4, "\"\\ufffd\\ufffd\\ufffd\\ufffd\""}, /* above U+10FFFF */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char *out = json_str(cases[i].in, cases[i].n);
        cr_expect_str_eq(out, cases[i].want, "case %zu", i);
        free(out);
    }
}

Test(json_str, output_of_arbitrary_bytes_is_always_valid_json)
{
    /* Random bytes, fixed seed: whatever goes in, jansson must parse what
     * comes out, and valid UTF-8 without NUL must round-trip exactly. */
    uint32_t x = 0x12345678u;
    for (int iter = 0; iter < 2000; iter++) {
        unsigned char in[48];
        size_t n = (size_t)(iter % 48);
        for (size_t i = 0; i < n; i++) {
            x ^= x << 13, x ^= x >> 17, x ^= x << 5;   /* xorshift32 */
            in[i] = (unsigned char)x;
        }
        cm_buf b = CM_BUF_INIT;
        cm_buf_put_json_str(&b, (const char *)in, n);
        json_error_t jerr;
        json_t *j = json_loadb(b.data, b.len, JSON_DECODE_ANY | JSON_ALLOW_NUL, &jerr);
        cr_assert_not_null(j, "iteration %d: %s in %s", iter, jerr.text, b.data);
        cr_assert(json_is_string(j));
        cm_buf_free(&b);
        json_decref(j);
    }
    const char ok[] = "plain ascii \xc3\xa9\xe2\x82\xac \"quoted\" \\ \n";
    cm_buf b = CM_BUF_INIT;
    cm_buf_put_json_str(&b, ok, sizeof ok - 1);
    json_t *j = json_loadb(b.data, b.len, JSON_DECODE_ANY, NULL);
    cr_assert_not_null(j);
    cr_assert_eq(json_string_length(j), sizeof ok - 1);
    cr_assert_eq(memcmp(json_string_value(j), ok, sizeof ok - 1), 0);
    json_decref(j);
    cm_buf_free(&b);
}

/* ---- metrics ------------------------------------------------------------ */

static char *render(void)
{
    cm_buf b = CM_BUF_INIT;
    cm_metrics_render(&b);
    return cm_buf_steal(&b);
}

Test(metrics, counter_renders_help_type_and_labelled_value)
{
    char labels[128];
    cm_metrics_labels(labels, sizeof labels, "topic", "t1", "type", "StockReserved", NULL);
    cr_assert_str_eq(labels, "topic=\"t1\",type=\"StockReserved\"");
    cm_series *s = cm_counter("tc_events_total", "Events seen.", labels);
    cm_series_inc(s);
    cm_series_add(s, 2);
    cr_assert_eq(cm_series_count(s), 3);
    cr_assert_eq(cm_counter("tc_events_total", "Events seen.", labels), s, "same series on lookup");

    char *out = render();
    cr_assert(strstr(out, "# HELP tc_events_total Events seen.\n") != NULL, "%s", out);
    cr_assert(strstr(out, "# TYPE tc_events_total counter\n") != NULL, "%s", out);
    cr_assert(strstr(out, "tc_events_total{topic=\"t1\",type=\"StockReserved\"} 3\n") != NULL, "%s", out);
    free(out);
}

Test(metrics, series_of_one_family_share_one_header)
{
    cm_series_inc(cm_counter("tc_fam_total", "Family.", "k=\"a\""));
    cm_series_inc(cm_counter("tc_other_total", "Other.", "k=\"x\""));
    cm_series_add(cm_counter("tc_fam_total", "Family.", "k=\"b\""), 5);
    char *out = render();
    const char *first = strstr(out, "# TYPE tc_fam_total counter\n");
    cr_assert_not_null(first, "%s", out);
    cr_assert_null(strstr(first + 1, "# TYPE tc_fam_total"), "header repeated:\n%s", out);
    const char *a = strstr(out, "tc_fam_total{k=\"a\"} 1\n");
    const char *b = strstr(out, "tc_fam_total{k=\"b\"} 5\n");
    const char *other = strstr(out, "# TYPE tc_other_total");
    cr_assert(a && b && other, "%s", out);
    cr_assert(a < b && (b < other || other < first), "family not grouped:\n%s", out);
    free(out);
}

Test(metrics, histogram_renders_cumulative_buckets_sum_and_count)
{
    cm_series *h = cm_histogram("tc_latency_seconds", "Latency.", "route=\"/x\"");
    cm_series_observe(h, 0.003);   /* falls in le=0.005 */
    cm_series_observe(h, 2.0);     /* falls in le=2.5 */
    cm_series_observe(h, 60.0);    /* only in +Inf */
    cr_assert_eq(cm_series_count(h), 3);
    char *out = render();
    cr_assert(strstr(out, "# TYPE tc_latency_seconds histogram\n") != NULL, "%s", out);
    cr_assert(strstr(out, "tc_latency_seconds_bucket{route=\"/x\",le=\"0.0025\"} 0\n") != NULL, "%s", out);
    cr_assert(strstr(out, "tc_latency_seconds_bucket{route=\"/x\",le=\"0.005\"} 1\n") != NULL, "%s", out);
    cr_assert(strstr(out, "tc_latency_seconds_bucket{route=\"/x\",le=\"1\"} 1\n") != NULL, "%s", out);
    cr_assert(strstr(out, "tc_latency_seconds_bucket{route=\"/x\",le=\"2.5\"} 2\n") != NULL, "%s", out);
    cr_assert(strstr(out, "tc_latency_seconds_bucket{route=\"/x\",le=\"10\"} 2\n") != NULL, "%s", out);
    cr_assert(strstr(out, "tc_latency_seconds_bucket{route=\"/x\",le=\"+Inf\"} 3\n") != NULL, "%s", out);
    cr_assert(strstr(out, "tc_latency_seconds_count{route=\"/x\"} 3\n") != NULL, "%s", out);
    const char *sum = strstr(out, "tc_latency_seconds_sum{route=\"/x\"} ");
    cr_assert_not_null(sum, "%s", out);
    double v = strtod(sum + strlen("tc_latency_seconds_sum{route=\"/x\"} "), NULL);
    cr_assert_float_eq(v, 62.003, 1e-6);
    free(out);
}

Test(metrics, label_values_are_escaped)
{
    char labels[128];
    cm_metrics_labels(labels, sizeof labels, "reason", "a\"b\\c\nd", NULL);
    cr_assert_str_eq(labels, "reason=\"a\\\"b\\\\c\\nd\"");
}

Test(metrics, gauge_renders_its_last_value)
{
    cm_series *g = cm_gauge("tc_lag", "Lag.", "group=\"choreo-audit\"");
    cm_series_set(g, 12);
    cm_series_set(g, 7.5);
    char *out = render();
    cr_assert(strstr(out, "# TYPE tc_lag gauge\n") != NULL, "%s", out);
    cr_assert(strstr(out, "tc_lag{group=\"choreo-audit\"} 7.5\n") != NULL, "%s", out);
    free(out);
}

/* ---- names ------------------------------------------------------------- */

Test(names, every_event_type_name_parses_back_to_itself)
{
    for (int t = 0; t < CM_EV_COUNT; t++)
        cr_assert_eq(cm_event_type_parse(cm_event_type_names[t]), (enum cm_event_type)t, "%s",
                     cm_event_type_names[t]);
    cr_assert_eq(cm_event_type_parse("checkoutinitiated"), CM_EV_UNKNOWN);
    cr_assert_eq(cm_event_type_parse(""), CM_EV_UNKNOWN);
}

Test(names, worker_and_group_names_follow_the_design)
{
    cr_assert_str_eq(cm_worker_names[CM_W_STOCK_RESERVATION], "stock-reservation");
    cr_assert_str_eq(cm_group_names[CM_W_STOCK_RESERVATION], "choreo-reservation");
    cr_assert_str_eq(cm_worker_names[CM_W_CQRS_PROJECTION], "cqrs-projection");
    cr_assert_str_eq(cm_group_names[CM_W_CQRS_PROJECTION], "choreo-cqrs");
    cr_assert_str_eq(cm_event_type_names[CM_EV_CHECKOUT_TIMED_OUT], "CheckoutTimedOut");
}
