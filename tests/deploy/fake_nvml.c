/* A stand-in for libnvidia-ml.so.1 with the five entry points plume's
 * GpuUtilizationCollector uses. FAKE_NVML_MODE (read at each call) picks the
 * behaviour:
 *   unset / "ok"   two GPUs, utilization 37% and 81%
 *   "init_fails"   nvmlInit_v2 returns an error
 *   "no_devices"   zero GPUs
 *   "read_fails_1" GPU 1's utilization read fails
 * FAKE_NVML_SHUTDOWN_FILE, when set, gets one line appended per nvmlShutdown. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
  unsigned int gpu;
  unsigned int memory;
} fake_utilization;

static int devices[2];

static int mode_is(const char* m) {
  const char* v = getenv("FAKE_NVML_MODE");
  if (v == NULL || v[0] == '\0') v = "ok";
  return strcmp(v, m) == 0;
}

int nvmlInit_v2(void) { return mode_is("init_fails") ? 9 /* NVML_ERROR_DRIVER_NOT_LOADED */ : 0; }

int nvmlShutdown(void) {
  const char* path = getenv("FAKE_NVML_SHUTDOWN_FILE");
  if (path != NULL) {
    FILE* f = fopen(path, "a");
    if (f != NULL) {
      fputs("shutdown\n", f);
      fclose(f);
    }
  }
  return 0;
}

int nvmlDeviceGetCount_v2(unsigned int* count) {
  *count = mode_is("no_devices") ? 0 : 2;
  return 0;
}

int nvmlDeviceGetHandleByIndex_v2(unsigned int index, void** device) {
  if (index >= 2) return 2; /* NVML_ERROR_INVALID_ARGUMENT */
  *device = &devices[index];
  return 0;
}

int nvmlDeviceGetUtilizationRates(void* device, fake_utilization* u) {
  if (device == &devices[1] && mode_is("read_fails_1")) return 15; /* NVML_ERROR_GPU_IS_LOST */
  u->gpu = device == &devices[0] ? 37 : 81;
  u->memory = 5;
  return 0;
}
