/* clock.h - wall and monotonic time. */
#ifndef CM_CLOCK_H
#define CM_CLOCK_H

#include <stdint.h>

int64_t cm_wall_ms(void);   /* milliseconds since the Unix epoch */
double cm_wall_s(void);     /* seconds since the epoch, with fractions */
int64_t cm_mono_ns(void);   /* monotonic nanoseconds, for durations only */
int64_t cm_mono_ms(void);
void cm_sleep_ms(int64_t ms);

#endif
