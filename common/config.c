/* config.c - the settings table loader (env, then flags). */
#include "common/config.h"
#include "common/xmalloc.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int cm_parse_int(const char *s, int64_t min, int64_t max, int64_t *out)
{
    if (!s || !*s)
        return -1;
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || *end || v < min || v > max)
        return -1;
    *out = v;
    return 0;
}

static int set_value(const cm_opt *o, const char *val, const char *source, char *err, size_t errlen)
{
    switch (o->type) {
    case CM_OPT_INT: {
        int64_t v;
        int64_t lo = o->min <= o->max ? (int64_t)o->min : INT64_MIN;
        int64_t hi = o->min <= o->max ? (int64_t)o->max : INT64_MAX;
        if (cm_parse_int(val, lo, hi, &v) != 0) {
            if (o->min <= o->max)
                snprintf(err, errlen, "%s=%s: expected an integer in %lld..%lld", source, val,
                         (long long)lo, (long long)hi);
            else
                snprintf(err, errlen, "%s=%s: expected an integer", source, val);
            return -1;
        }
        *(int64_t *)o->ptr = v;
        return 0;
    }
    case CM_OPT_DOUBLE: {
        char *end;
        errno = 0;
        double v = strtod(val, &end);
        if (!*val || *end || errno || !isfinite(v) || (o->min <= o->max && (v < o->min || v > o->max))) {
            if (o->min <= o->max)
                snprintf(err, errlen, "%s=%s: expected a number in %g..%g", source, val, o->min, o->max);
            else
                snprintf(err, errlen, "%s=%s: expected a number", source, val);
            return -1;
        }
        *(double *)o->ptr = v;
        return 0;
    }
    case CM_OPT_BOOL:
        if (!strcmp(val, "1") || !strcmp(val, "true") || !strcmp(val, "yes") || !strcmp(val, "on"))
            *(bool *)o->ptr = true;
        else if (!strcmp(val, "0") || !strcmp(val, "false") || !strcmp(val, "no") || !strcmp(val, "off"))
            *(bool *)o->ptr = false;
        else {
            snprintf(err, errlen, "%s=%s: expected true or false", source, val);
            return -1;
        }
        return 0;
    case CM_OPT_STR: {
        char **p = o->ptr;
        free(*p);
        *p = cm_xstrdup(val);
        return 0;
    }
    }
    return -1;
}

void cm_config_usage(const char *prog, const cm_opt *opts)
{
    printf("usage: %s [--flag=value ...]\n", prog);
    for (const cm_opt *o = opts; o->name; o++)
        printf("  --%-22s %-22s (default %s) %s\n", o->name, o->env ? o->env : "",
               o->def ? o->def : "unset", o->help ? o->help : "");
}

int cm_config_load(const cm_opt *opts, int argc, char **argv, char *err, size_t errlen)
{
    char src[160];
    for (const cm_opt *o = opts; o->name; o++) {
        if (o->type == CM_OPT_STR)
            *(char **)o->ptr = NULL;
        if (o->def) {
            snprintf(src, sizeof src, "default of --%s", o->name);
            if (set_value(o, o->def, src, err, errlen) != 0)
                return -1;
        }
        const char *ev = o->env ? getenv(o->env) : NULL;
        if (ev && set_value(o, ev, o->env, err, errlen) != 0)
            return -1;
    }
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            cm_config_usage(argv[0], opts);
            return 1;
        }
        if (strncmp(a, "--", 2) != 0) {
            snprintf(err, errlen, "unexpected argument '%s' (flags are --name=value)", a);
            return -1;
        }
        const char *name = a + 2;
        const char *eq = strchr(name, '=');
        size_t nlen = eq ? (size_t)(eq - name) : strlen(name);
        const cm_opt *o = opts;
        for (; o->name; o++)
            if (strlen(o->name) == nlen && !strncmp(o->name, name, nlen))
                break;
        if (!o->name) {
            snprintf(err, errlen, "unknown flag --%.*s (see --help)", (int)nlen, name);
            return -1;
        }
        const char *val = eq ? eq + 1 : NULL;
        if (!val) {
            if (o->type == CM_OPT_BOOL)
                val = "true";
            else if (i + 1 < argc)
                val = argv[++i];
            else {
                snprintf(err, errlen, "flag --%s needs a value", o->name);
                return -1;
            }
        }
        snprintf(src, sizeof src, "--%s", o->name);
        if (set_value(o, val, src, err, errlen) != 0)
            return -1;
    }
    return 0;
}

void cm_config_free(const cm_opt *opts)
{
    for (const cm_opt *o = opts; o->name; o++) {
        if (o->type == CM_OPT_STR) {
            free(*(char **)o->ptr);
            *(char **)o->ptr = NULL;
        }
    }
}
