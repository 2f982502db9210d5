/*
 * fd_table_util.h — for suites that check the room dspex makes in the
 * kernel's descriptor table (dx_reserve_descriptors): its current size.
 */
#ifndef DSPEX_TESTS_FD_TABLE_UTIL_H
#define DSPEX_TESTS_FD_TABLE_UTIL_H

#include <stdio.h>

/* Slots in this process's descriptor table (FDSize in /proc/self/status);
 * 0 if it cannot be read. */
static inline unsigned fd_table_size(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    if (f == NULL)
        return 0;
    char line[256];
    unsigned size = 0;
    while (fgets(line, sizeof line, f) != NULL)
        if (sscanf(line, "FDSize: %u", &size) == 1)
            break;
    fclose(f);
    return size;
}

#endif
