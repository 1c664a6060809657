/* ids.h - UUIDv7 event and checkout ids, and identifier validation. */
#ifndef CM_IDS_H
#define CM_IDS_H

#include <stdbool.h>
#include <stddef.h>

#define CM_UUID_LEN 36  /* text form without the NUL */

/* Writes a new UUIDv7 (48-bit ms timestamp, random rest) into out[37].
 * Thread-safe; ids from one thread are strictly increasing. */
void cm_uuid7(char out[CM_UUID_LEN + 1]);

/* Derives the id of a follow-up event from its cause: a UUID that keeps the
 * parent's 48-bit timestamp and takes the rest from BLAKE2b(parent_id, tag).
 * Same inputs, same id: a re-processed event re-appends the same follow-up
 * id, and the store drops the duplicate. */
void cm_uuid_derive(const char *parent_id, const char *tag, char out[CM_UUID_LEN + 1]);

/* True if s is a canonical lower- or upper-case 8-4-4-4-12 UUID. */
bool cm_uuid_valid(const char *s);

/* True if s (n bytes) is 1..max bytes of [A-Za-z0-9_-]: the charset DESIGN.md
 * allows for client, product and checkout ids. */
bool cm_id_valid(const char *s, size_t n, size_t max);

/* Parses a stream entry id "<ms>-<seq>" (digits only, nothing after):
 * true with its parts, false for anything else. */
bool cm_stream_id_parse(const char *s, unsigned long long *ms, unsigned long long *seq);

#endif
