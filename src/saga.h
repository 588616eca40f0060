/*
 * saga — sagas, aggregates with point-to-point commands, units of work and
 * the in-memory saga store, built on the public bus API only (saga.c).
 *
 * These internal helpers are exposed to the tests through the internal
 * library: topic matching as the bus routes (AMQP 0-9-1 topic rules), the
 * covering pattern a saga or aggregate subscribes to, and the derived ids.
 */
#ifndef EB_SAGA_H
#define EB_SAGA_H

#include <eventbus/eventbus.h>

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* True if topic matches pattern under the bus's rules, including the rule
   that a topic whose first word starts with '$' is matched only by a
   pattern whose first word is spelled out. Both are NUL-terminated; longer
   inputs than a pattern of EB_TOPIC_MAX bytes and a topic of EB_TOPIC_MAX +
   12 (a dead-letter topic, which a saga may react to) never match. */
bool eb__topic_match(const char *pattern, const char *topic);

/*
 * Writes into out (EB_TOPIC_MAX + 1 bytes) the narrowest single pattern that
 * matches every topic matched by any of patterns[0..n): the pattern itself
 * if n == 1 (or all are equal), else their common leading literal words
 * followed by "#". Returns EB_OK or EB_EINVAL (n == 0, a NULL or too long
 * pattern).
 */
int eb__cover_pattern(const char *const *patterns, size_t n, char *out);

/* 16-byte id (UUID version 8 layout) derived from the saga name, the
   instance key and, if with_seq, a transition number and a position: the
   instance id (the correlation id of all its instances), and the command
   ids of an instance whose record has no start id. */
void eb__saga_id(const char *name, const void *key, size_t key_len, bool with_seq,
                 uint64_t transition, uint32_t position, uint8_t id[16]);

/*
 * The ids of an instance with a start id (the id of the event that created
 * it), so that the instances one key has over time differ. (name, key) is
 * hashed once (a, b); the instance's tag is 48 bits from a and the start
 * id, its check 16 bits from b and the tag. Its command ids: bytes 0-5 the
 * tag, bytes 14-15 the check, bytes 6-13 from (a, tag, transition,
 * position) with the version 8 and variant bits.
 */
typedef struct eb__saga_tag {
    uint64_t a, b; /* (name, key) */
    uint64_t tag;  /* 48 bits */
    uint16_t check;
} eb__saga_tag;

void eb__saga_tag_init(eb__saga_tag *t, const char *name, const void *key, size_t key_len,
                       const uint8_t start[16]);
void eb__saga_command_id(const eb__saga_tag *t, uint64_t transition, uint32_t position,
                         uint8_t id[16]);
/* Reads the tag out of a command id of t's (name, key) (one with its
   check): false for any other id (a bus event id, a random command id, an
   id of another key or of a record without a start id; a foreign id passes
   with odds 2^-16). */
bool eb__saga_tag_of(const eb__saga_tag *t, const uint8_t id[16], uint64_t *tag);

#endif /* EB_SAGA_H */
