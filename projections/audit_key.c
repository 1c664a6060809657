/* audit_key.c - the audit chain's key (AUDIT_KEY / AUDIT_KEY_FILE): parsing,
 * loading and its public fingerprint.
 *
 * The key never goes to Redis: only its fingerprint (key_id, a keyed hash of
 * a constant, which reveals nothing about the key) is stored in the head, so
 * a worker or verifier holding another key is told so instead of writing or
 * reading a chain it cannot continue. */
#include "projections/audit.h"
#include "common/log.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <sodium.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define KEY_TEXT_MAX 4096   /* longest AUDIT_KEY text accepted (a file's size too) */
#define ID_DOMAIN "chorus-audit-key-id"

static void set_unkeyed(pj_audit_key *key)
{
    sodium_memzero(key->bytes, sizeof key->bytes);
    key->len = 0;
    snprintf(key->id, sizeof key->id, "%s", PJ_AUDIT_UNKEYED);
}

static void set_id(pj_audit_key *key)
{
    unsigned char h[crypto_generichash_BYTES_MIN];
    crypto_generichash(h, sizeof h, (const unsigned char *)ID_DOMAIN, strlen(ID_DOMAIN), key->bytes, key->len);
    sodium_bin2hex(key->id, sizeof key->id, h, (PJ_AUDIT_KEY_ID - 1) / 2);
}

static bool all_hex(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!isxdigit((unsigned char)s[i]))
            return false;
    return true;
}

/* Base64 in either alphabet, padding optional: rewritten to the standard
 * alphabet without padding, then decoded. Returns 0 or -1. */
static int decode_base64(const char *s, size_t n, pj_audit_key *key)
{
    char norm[KEY_TEXT_MAX + 1];
    while (n > 0 && s[n - 1] == '=')
        n--;
    for (size_t i = 0; i < n; i++)
        norm[i] = s[i] == '-' ? '+' : s[i] == '_' ? '/' : s[i];
    size_t out = 0;
    const char *end = NULL;
    int rc = sodium_base642bin(key->bytes, sizeof key->bytes, norm, n, NULL, &out, &end,
                               sodium_base64_VARIANT_ORIGINAL_NO_PADDING);
    sodium_memzero(norm, sizeof norm);
    if (rc != 0 || end != norm + n)
        return -1;
    key->len = out;
    return 0;
}

int pj_audit_key_parse(const char *text, size_t len, const char *what, pj_audit_key *key, char *err,
                       size_t errlen)
{
    set_unkeyed(key);
    while (len > 0 && isspace((unsigned char)*text))
        text++, len--;
    while (len > 0 && isspace((unsigned char)text[len - 1]))
        len--;
    if (len == 0) {
        snprintf(err, errlen, "%s is empty", what);
        return -1;
    }
    if (len > KEY_TEXT_MAX) {
        snprintf(err, errlen, "%s is %zu characters long; a key is %d..%d bytes (hex or base64)", what, len,
                 PJ_AUDIT_KEY_MIN, PJ_AUDIT_KEY_MAX);
        return -1;
    }
    size_t bytes;
    const char *form;
    if (all_hex(text, len) && len % 2 == 0) {
        form = "hex";
        bytes = len / 2;
    } else {
        form = "base64";
        size_t n = len;
        while (n > 0 && text[n - 1] == '=')
            n--;
        bytes = n * 3 / 4;
    }
    if (bytes < PJ_AUDIT_KEY_MIN || bytes > PJ_AUDIT_KEY_MAX) {
        snprintf(err, errlen, "%s is %zu bytes (read as %s); it must be %d..%d bytes, e.g. `head -c 32 /dev/urandom | base64`",
                 what, bytes, form, PJ_AUDIT_KEY_MIN, PJ_AUDIT_KEY_MAX);
        return -1;
    }
    int rc;
    if (!strcmp(form, "hex")) {
        size_t out = 0;
        rc = sodium_hex2bin(key->bytes, sizeof key->bytes, text, len, NULL, &out, NULL);
        key->len = out;
    } else {
        rc = decode_base64(text, len, key);
    }
    if (rc != 0 || key->len < PJ_AUDIT_KEY_MIN) {
        set_unkeyed(key);
        snprintf(err, errlen, "%s is neither hex nor base64 (%d..%d bytes)", what, PJ_AUDIT_KEY_MIN,
                 PJ_AUDIT_KEY_MAX);
        return -1;
    }
    set_id(key);
    return 0;
}

/* Reads the key file at path into buf (NUL-terminated). Returns its length or -1. */
static long read_key_file(const char *path, char *buf, size_t bufsize, char *err, size_t errlen)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        snprintf(err, errlen, "AUDIT_KEY_FILE %s: %s", path, strerror(errno));
        return -1;
    }
    struct stat st;
    long n = -1;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        snprintf(err, errlen, "AUDIT_KEY_FILE %s: not a regular file", path);
        goto done;
    }
    if (st.st_size > (off_t)(bufsize - 1)) {
        snprintf(err, errlen, "AUDIT_KEY_FILE %s: %lld bytes; a key file holds one key (hex or base64)", path,
                 (long long)st.st_size);
        goto done;
    }
    if (st.st_mode & 077)
        cm_log(CM_WARN, "AUDIT_KEY_FILE %s is readable by other users: chmod 600 it", path);
    ssize_t r = read(fd, buf, bufsize - 1);
    if (r < 0) {
        snprintf(err, errlen, "AUDIT_KEY_FILE %s: %s", path, strerror(errno));
        goto done;
    }
    buf[r] = '\0';
    n = (long)r;
done:
    close(fd);
    return n;
}

int pj_audit_key_load(const char *value, const char *path, pj_audit_key *key, char *err, size_t errlen)
{
    set_unkeyed(key);
    bool have_value = value && *value, have_path = path && *path;
    if (have_value && have_path) {
        snprintf(err, errlen, "both AUDIT_KEY and AUDIT_KEY_FILE are set: give one");
        return -1;
    }
    if (have_value)
        return pj_audit_key_parse(value, strlen(value), "AUDIT_KEY", key, err, errlen);
    if (!have_path)
        return 0;
    char buf[KEY_TEXT_MAX + 2];
    long n = read_key_file(path, buf, sizeof buf, err, errlen);
    if (n < 0)
        return -1;
    char what[300];
    snprintf(what, sizeof what, "the key in AUDIT_KEY_FILE %s", path);
    int rc = pj_audit_key_parse(buf, (size_t)n, what, key, err, errlen);
    sodium_memzero(buf, sizeof buf);
    return rc;
}

void pj_audit_key_wipe(pj_audit_key *key)
{
    if (key)
        set_unkeyed(key);
}
