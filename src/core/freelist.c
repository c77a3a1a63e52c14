#include "core/freelist.h"

#include <stdlib.h>

void freelist_trim(struct freelist *f, size_t keep)
{
    while (f->count > keep)
        free(freelist_pop(f));
}

size_t freelist_trim_unused(struct freelist *f, size_t keep)
{
    size_t freed = 0;
    for (size_t spare = f->low; spare > 0 && f->count > keep; spare--) {
        free(freelist_pop(f));
        freed += f->bytes;
    }
    f->low = f->count;
    return freed;
}
