/* config.h - declarative settings: environment first, flags override.
 *
 * A daemon describes its settings as one table of cm_opt rows; cm_config_load
 * fills every ptr from its default, then from its env var, then from
 * `--name=value` / `--name value` flags. Values are range-checked; a bad
 * value is reported naming the variable and the rule, never guessed. */
#ifndef CM_CONFIG_H
#define CM_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum cm_opt_type { CM_OPT_INT, CM_OPT_DOUBLE, CM_OPT_STR, CM_OPT_BOOL };

typedef struct cm_opt {
    const char *name;        /* flag name, e.g. "redis-url" for --redis-url */
    const char *env;         /* environment variable, e.g. "REDIS_URL" */
    enum cm_opt_type type;
    void *ptr;               /* int64_t*, double*, char** (malloc'd, caller frees), bool* */
    const char *def;         /* default as text; NULL for strings means NULL */
    double min, max;         /* inclusive range for numbers; ignored when min > max */
    const char *help;
} cm_opt;

/* Loads the table (terminated by a row with name == NULL). Returns 0, or -1
 * with a one-line message in err naming the setting and what is wrong.
 * Prints usage and returns 1 when --help is given. Unknown flags are errors. */
int cm_config_load(const cm_opt *opts, int argc, char **argv, char *err, size_t errlen)
    __attribute__((warn_unused_result));

/* Frees the strings the table's CM_OPT_STR rows point to and sets them NULL. */
void cm_config_free(const cm_opt *opts);

/* Prints `--name  ENV  (default)  help` lines to stdout. */
void cm_config_usage(const char *prog, const cm_opt *opts);

/* Parses a whole decimal integer in [min,max]; 0 ok, -1 otherwise. */
int cm_parse_int(const char *s, int64_t min, int64_t max, int64_t *out)
    __attribute__((warn_unused_result));

#endif
