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
 * it), so that the instances one key has over time differ. Its tag
 * (EB__SAGA_TAG bytes): 48 bits from (name, key, start id), then a 16-bit
 * check from (name, key, those 48 bits). Its command ids: bytes 0-5 the
 * tag's 48 bits, bytes 14-15 its check, the rest from (name, key, tag,
 * transition, position) with the version 8 and variant bits.
 * eb__saga_command_tag reads the tag back out of an id that carries the
 * check of (name, key): false for any other id (a bus event id, a random
 * command id, an id of another key or of a record without a start id; a
 * foreign id passes with odds 2^-16).
 */
#define EB__SAGA_TAG 8
void eb__saga_tag(const char *name, const void *key, size_t key_len, const uint8_t start[16],
                  uint8_t tag[EB__SAGA_TAG]);
void eb__saga_command_id(const char *name, const void *key, size_t key_len,
                         const uint8_t tag[EB__SAGA_TAG], uint64_t transition, uint32_t position,
                         uint8_t id[16]);
bool eb__saga_command_tag(const char *name, const void *key, size_t key_len, const uint8_t id[16],
                          uint8_t tag[EB__SAGA_TAG]);

#endif /* EB_SAGA_H */
