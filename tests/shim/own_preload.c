/*
 * A VMM's own LD_PRELOAD library, for the shim's tests: its constructor
 * appends the name of the program it was loaded into to $OWN_PRELOAD_LOG,
 * so a test sees that the command still loads it under the shim, and only
 * the command does.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

__attribute__((constructor)) static void loaded(void)
{
    const char *log = getenv("OWN_PRELOAD_LOG");
    char exe[256], line[300];
    ssize_t n;
    int fd;

    if (!log)
        return;
    n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    exe[n < 0 ? 0 : n] = '\0';
    fd = open(log, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0)
        return;
    n = snprintf(line, sizeof(line), "%s\n", strrchr(exe, '/') ? strrchr(exe, '/') + 1 : exe);
    if (write(fd, line, (size_t)n) < 0)
        n = 0;
    close(fd);
}
