"""cffi out-of-line (API mode) build of the natpair core.

Owns how cext/*.c becomes the extension module ``dataplane._core``. The cdef
is the block of natpair.h between the cffi markers, so the header stays the
one source of truth for the API; the C sources are real files, so compiler
errors point at them.
"""
import pathlib
import re

from cffi import FFI

HERE = pathlib.Path(__file__).resolve().parent
HEADER = HERE / "natpair.h"
SOURCES = sorted(str(p.relative_to(HERE.parent)) for p in HERE.glob("np_*.c"))


def cdef_text() -> str:
    text = HEADER.read_text()
    match = re.search(r"/\* cffi:begin \*/(.*)/\* cffi:end \*/", text, re.S)
    if match is None:
        raise SystemExit(f"{HEADER}: cffi markers not found")
    return match.group(1)


ffibuilder = FFI()
ffibuilder.cdef(cdef_text())
ffibuilder.set_source(
    "dataplane._core",
    '#include "natpair.h"\n',
    sources=SOURCES,
    include_dirs=[str(HERE.relative_to(HERE.parent))],
    libraries=["netfilter_queue", "mnl"],      # np_feed.c
    extra_compile_args=["-std=gnu11", "-O2", "-Wall", "-Wextra", "-Wno-unused-parameter",
                        "-fno-strict-aliasing"],
)

if __name__ == "__main__":
    import os
    os.chdir(HERE.parent)
    ffibuilder.compile(tmpdir=".", verbose=False)
