/* bcryptprimitives.dll for Wine 8, which lacks ProcessPrng: Rust's standard
 * library imports it for random numbers. Forwards to RtlGenRandom
 * (advapi32's SystemFunction036). Only for running tests under Wine. */
#include <windows.h>

typedef BOOLEAN(WINAPI *gen_random_fn)(PVOID, ULONG);

BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len)
{
    static gen_random_fn gen_random;
    if (!gen_random) {
        gen_random = (gen_random_fn)GetProcAddress(LoadLibraryA("advapi32.dll"), "SystemFunction036");
        if (!gen_random)
            return FALSE;
    }
    while (len > 0) {
        ULONG chunk = len > 0x40000000 ? 0x40000000 : (ULONG)len;
        if (!gen_random(data, chunk))
            return FALSE;
        data += chunk;
        len -= chunk;
    }
    return TRUE;
}
