#include "core/str.h"

/* Marks "one more, empty, element after a trailing comma" in a list being
 * split: distinct from an exhausted list, which has p == NULL. */
static const char trailing_empty[1];

bool slice_next_token(struct slice *list, struct slice *elem)
{
    if (list->p == NULL)
        return false;
    if (list->p == trailing_empty) {
        *elem = slice_make(trailing_empty, 0);
        list->p = NULL;
        return true;
    }
    if (list->len == 0) {
        list->p = NULL;
        return false;
    }
    const char *comma = memchr(list->p, ',', list->len);
    size_t n = comma ? (size_t)(comma - list->p) : list->len;
    *elem = slice_trim_ows(slice_make(list->p, n));
    if (comma) {
        list->p = comma + 1;
        list->len -= n + 1;
        if (list->len == 0)
            list->p = trailing_empty;
    } else {
        list->p = NULL;
        list->len = 0;
    }
    return true;
}
bool slice_list_has_token(struct slice list, const char *token)
{
    struct slice e, t = slice_cstr(token);
    while (slice_next_token(&list, &e))
        if (slice_eq_ci(e, t))
            return true;
    return false;
}

size_t u64_to_dec(uint64_t v, char *out)
{
    char tmp[20];
    size_t n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    for (size_t i = 0; i < n; i++)
        out[i] = tmp[n - 1 - i];
    return n;
}

size_t u64_to_hex(uint64_t v, char *out)
{
    static const char hex[] = "0123456789abcdef";
    char tmp[16];
    size_t n = 0;
    do {
        tmp[n++] = hex[v & 15];
        v >>= 4;
    } while (v);
    for (size_t i = 0; i < n; i++)
        out[i] = tmp[n - 1 - i];
    return n;
}
