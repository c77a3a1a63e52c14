/* Byte slices: a pointer and a length into memory owned by someone else. */
#ifndef PORTICO_CORE_STR_H
#define PORTICO_CORE_STR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

struct slice {
    const char *p;
    size_t len;
};

#define SLICE_LIT(s) ((struct slice){(s), sizeof(s) - 1})
#define SLICE_NULL   ((struct slice){NULL, 0})

static inline struct slice slice_make(const char *p, size_t len)
{
    return (struct slice){p, len};
}

static inline struct slice slice_cstr(const char *s)
{
    return (struct slice){s, s ? strlen(s) : 0};
}

static inline bool slice_eq(struct slice a, struct slice b)
{
    return a.len == b.len && (a.len == 0 || memcmp(a.p, b.p, a.len) == 0);
}

static inline char ascii_lower(char c)
{
    return (c >= 'A' && c <= 'Z') ? (char)(c | 0x20) : c;
}

/* ASCII case-insensitive comparison (header names, hosts, tokens). */
static inline bool slice_eq_ci(struct slice a, struct slice b)
{
    if (a.len != b.len)
        return false;
    for (size_t i = 0; i < a.len; i++)
        if (ascii_lower(a.p[i]) != ascii_lower(b.p[i]))
            return false;
    return true;
}

static inline bool slice_eq_lit_ci(struct slice a, const char *lit)
{
    return slice_eq_ci(a, slice_cstr(lit));
}

static inline bool slice_starts_with(struct slice s, struct slice prefix)
{
    return s.len >= prefix.len && memcmp(s.p, prefix.p, prefix.len) == 0;
}

/* Strip leading and trailing spaces and tabs (optional whitespace, RFC 9110 5.6.3). */
static inline struct slice slice_trim_ows(struct slice s)
{
    while (s.len && (s.p[0] == ' ' || s.p[0] == '\t')) {
        s.p++;
        s.len--;
    }
    while (s.len && (s.p[s.len - 1] == ' ' || s.p[s.len - 1] == '\t'))
        s.len--;
    return s;
}

/* Decimal and lowercase hex digits of v into out (20 / 16 bytes at most, no
 * NUL). Return the number of digits. */
size_t u64_to_dec(uint64_t v, char *out);
size_t u64_to_hex(uint64_t v, char *out);

/* Copy n bytes to d and return the end (for building heads by hand). */
static inline char *mem_put(char *d, const void *src, size_t n)
{
    memcpy(d, src, n);
    return d + n;
}
#define MEM_PUT_LIT(d, lit) mem_put((d), (lit), sizeof(lit) - 1)

/* Split the next comma-separated element off `*list` (trimmed, may be empty).
 * Returns false when the list is exhausted. */
bool slice_next_token(struct slice *list, struct slice *elem);

/* Case-insensitive search for `token` as one element of a comma-separated list. */
bool slice_list_has_token(struct slice list, const char *token);

#endif
