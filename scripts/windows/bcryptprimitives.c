// Wine 8.0 lacks bcryptprimitives.dll, whose ProcessPrng every Rust std >= 1.78 program imports:
// without it each .exe exits with code 53 and prints nothing. This stand-in forwards to
// RtlGenRandom (advapi32). Build and install into a Wine prefix:
//   x86_64-w64-mingw32-gcc -shared -O2 -s -o bcryptprimitives.dll bcryptprimitives.c -ladvapi32
//   cp bcryptprimitives.dll "$WINEPREFIX/drive_c/windows/system32/"
// Only for testing under Wine: real Windows has the DLL.
/* Stand-in bcryptprimitives.dll for Wine 8.0, which lacks it.
   Rust std >= 1.78 imports ProcessPrng from it; forward to RtlGenRandom (advapi32!SystemFunction036). */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length); /* RtlGenRandom */

__declspec(dllexport) BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T len)
{
    while (len > 0) {
        ULONG chunk = len > 0x40000000 ? 0x40000000 : (ULONG)len;
        if (!SystemFunction036(data, chunk))
            return FALSE;
        data += chunk;
        len -= chunk;
    }
    return TRUE; /* documented to always return TRUE */
}

BOOL WINAPI DllMain(HINSTANCE inst, DWORD reason, LPVOID reserved)
{
    (void)inst; (void)reason; (void)reserved;
    return TRUE;
}
