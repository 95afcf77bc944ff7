/*
 * kvm_smoke: the program scopecheck's `boot` command runs inside the booted
 * arm64 kernel (from the initramfs, as root, before anything else).
 *
 *   kvm_smoke run [--markers] create a VM with one memory slot and one vcpu, run
 *                            guest code that ends in two MMIO writes, check the
 *                            exits (reason, address, length, value); with
 *                            --markers, call a "begin" and an "end" stub at
 *                            MARKER_PAGE around it, so a QEMU exec log filtered
 *                            to that page brackets exactly this run
 *   kvm_smoke btf NAME...    print the size of each named struct from the
 *                            running kernel's BTF (/sys/kernel/btf/vmlinux)
 *
 * Every result is one console line starting "SCOPECHECK: ", which the host
 * side (scopecheck/boot/) parses.  Exit status 0 when everything asked for
 * worked, 1 otherwise.
 *
 * Built by scopecheck at run time:  aarch64-linux-gnu-gcc -static -O2
 * Only the kernel's uapi headers (linux-libc-dev-arm64-cross) are used.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/utsname.h>
#include <unistd.h>
#include <stddef.h>
#include <linux/kvm.h>

#define MARK "SCOPECHECK: "

/* Guest physical layout: one 64 KiB slot of RAM at GUEST_RAM, code at its
 * start; GUEST_MMIO is outside every slot, so a store there exits to us. */
#define GUEST_RAM   0x10000000ULL
#define GUEST_SIZE  0x10000ULL
#define GUEST_MMIO  0x10000ULL
#define GUEST_VALUE 0xc0ffee42ULL

/* The guest: x1 = GUEST_VALUE; store it to GUEST_MMIO; x1 += 1; store again;
 * then spin (never reached: we stop after the second exit).  MMU is off, so
 * the store is a Device access to an unbacked IPA: a data abort at stage 2
 * that KVM turns into KVM_EXIT_MMIO. */
__asm__(
    "   .pushsection .rodata\n"
    "   .balign 4\n"
    "   .global scopecheck_guest_start\n"
    "scopecheck_guest_start:\n"
    "   movz x1, #0xee42\n"
    "   movk x1, #0xc0ff, lsl #16\n"
    "   movz x2, #0x1, lsl #16\n"        /* 0x10000 = GUEST_MMIO */
    "   str  x1, [x2]\n"
    "   add  x1, x1, #1\n"
    "   str  x1, [x2]\n"
    "1: b    1b\n"
    "   .global scopecheck_guest_end\n"
    "scopecheck_guest_end:\n"
    "   .popsection\n");
extern const unsigned char scopecheck_guest_start[], scopecheck_guest_end[];

/* --markers: a page of code at a fixed user address; executing offset 0 means
 * "the VM's life starts here", offset 0x40 "it ended". */
#define MARKER_PAGE 0x5c09e0000ULL
typedef void (*marker_fn)(void);
static marker_fn marker_begin, marker_end;

static void setup_markers(void)
{
    void *p = mmap((void *)(uintptr_t)MARKER_PAGE, 4096, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
    if (p != (void *)(uintptr_t)MARKER_PAGE) {
        printf(MARK "markers unavailable: %s\n", strerror(errno));
        return;
    }
    uint32_t *code = p;
    code[0] = 0xd65f03c0;          /* ret */
    code[0x40 / 4] = 0xd65f03c0;   /* ret */
    __builtin___clear_cache((char *)p, (char *)p + 4096);
    if (mprotect(p, 4096, PROT_READ | PROT_EXEC) != 0) {
        printf(MARK "markers unavailable: mprotect: %s\n", strerror(errno));
        return;
    }
    marker_begin = (marker_fn)p;
    marker_end = (marker_fn)((char *)p + 0x40);
    printf(MARK "markers at 0x%llx\n", (unsigned long long)MARKER_PAGE);
}

static int fail(const char *what)
{
    printf(MARK "kvm error: %s: %s (errno %d)\n", what, strerror(errno), errno);
    fflush(stdout);
    return 1;
}

static const char *exit_name(uint32_t r)
{
    switch (r) {
    case KVM_EXIT_UNKNOWN: return "UNKNOWN";
    case KVM_EXIT_EXCEPTION: return "EXCEPTION";
    case KVM_EXIT_IO: return "IO";
    case KVM_EXIT_HYPERCALL: return "HYPERCALL";
    case KVM_EXIT_DEBUG: return "DEBUG";
    case KVM_EXIT_HLT: return "HLT";
    case KVM_EXIT_MMIO: return "MMIO";
    case KVM_EXIT_SHUTDOWN: return "SHUTDOWN";
    case KVM_EXIT_FAIL_ENTRY: return "FAIL_ENTRY";
    case KVM_EXIT_INTR: return "INTR";
    case KVM_EXIT_INTERNAL_ERROR: return "INTERNAL_ERROR";
    case KVM_EXIT_SYSTEM_EVENT: return "SYSTEM_EVENT";
    default: return "OTHER";
    }
}

static int run_vm(void)
{
    if (marker_begin)
        marker_begin();
    int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (kvm < 0)
        return fail("open /dev/kvm");
    int api = ioctl(kvm, KVM_GET_API_VERSION, 0);
    printf(MARK "kvm api %d\n", api);

    int vm = ioctl(kvm, KVM_CREATE_VM, 0UL);  /* type 0: default 40-bit IPA */
    if (vm < 0)
        return fail("KVM_CREATE_VM");

    void *mem = mmap(NULL, GUEST_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED)
        return fail("mmap guest memory");
    size_t code_len = (size_t)(scopecheck_guest_end - scopecheck_guest_start);
    memcpy(mem, scopecheck_guest_start, code_len);

    struct kvm_userspace_memory_region region = {
        .slot = 0,
        .flags = 0,
        .guest_phys_addr = GUEST_RAM,
        .memory_size = GUEST_SIZE,
        .userspace_addr = (uint64_t)(uintptr_t)mem,
    };
    if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region) < 0)
        return fail("KVM_SET_USER_MEMORY_REGION");

    int vcpu = ioctl(vm, KVM_CREATE_VCPU, 0UL);
    if (vcpu < 0)
        return fail("KVM_CREATE_VCPU");

    struct kvm_vcpu_init init;
    memset(&init, 0, sizeof(init));
    if (ioctl(vm, KVM_ARM_PREFERRED_TARGET, &init) < 0)
        return fail("KVM_ARM_PREFERRED_TARGET");
    if (ioctl(vcpu, KVM_ARM_VCPU_INIT, &init) < 0)
        return fail("KVM_ARM_VCPU_INIT");

    uint64_t pc = GUEST_RAM;
    struct kvm_one_reg reg = {
        .id = KVM_REG_ARM64 | KVM_REG_SIZE_U64 | KVM_REG_ARM_CORE | KVM_REG_ARM_CORE_REG(regs.pc),
        .addr = (uint64_t)(uintptr_t)&pc,
    };
    if (ioctl(vcpu, KVM_SET_ONE_REG, &reg) < 0)
        return fail("KVM_SET_ONE_REG pc");

    int run_size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
    if (run_size < (int)sizeof(struct kvm_run))
        return fail("KVM_GET_VCPU_MMAP_SIZE");
    struct kvm_run *run = mmap(NULL, (size_t)run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
    if (run == MAP_FAILED)
        return fail("mmap kvm_run");

    printf(MARK "kvm vm created: target %u, ram 0x%llx+0x%llx, pc 0x%llx, %zu bytes of guest code\n",
           init.target, (unsigned long long)GUEST_RAM, (unsigned long long)GUEST_SIZE,
           (unsigned long long)pc, code_len);
    fflush(stdout);

    int ok = 1;
    for (int i = 0; i < 2; i++) {
        if (ioctl(vcpu, KVM_RUN, 0) < 0)
            return fail("KVM_RUN");
        uint64_t value = 0;
        if (run->exit_reason == KVM_EXIT_MMIO) {
            memcpy(&value, run->mmio.data, run->mmio.len <= 8 ? run->mmio.len : 8);
            printf(MARK "kvm exit %d reason MMIO write %d addr 0x%llx len %u data 0x%llx\n", i + 1,
                   run->mmio.is_write, (unsigned long long)run->mmio.phys_addr, run->mmio.len,
                   (unsigned long long)value);
        } else {
            printf(MARK "kvm exit %d reason %s (%u)\n", i + 1, exit_name(run->exit_reason),
                   run->exit_reason);
        }
        fflush(stdout);
        uint64_t want = GUEST_VALUE + (uint64_t)i;
        if (run->exit_reason != KVM_EXIT_MMIO || !run->mmio.is_write ||
            run->mmio.phys_addr != GUEST_MMIO || run->mmio.len != 8 || value != want) {
            printf(MARK "kvm guest unexpected exit %d: want MMIO write addr 0x%llx len 8 data 0x%llx\n",
                   i + 1, (unsigned long long)GUEST_MMIO, (unsigned long long)want);
            ok = 0;
            break;
        }
    }
    close(vcpu);
    close(vm);
    close(kvm);
    if (marker_end)
        marker_end();
    if (ok)
        printf(MARK "kvm guest ok\n");
    fflush(stdout);
    return ok ? 0 : 1;
}

/* ------------------------------------------------------------------ BTF */

/* The BTF format (Documentation/bpf/btf.rst): a header, then a type section
 * of variable-length records, then a string section.  Only struct names and
 * sizes are needed, but every record has to be skipped correctly. */
struct btf_hdr {
    uint16_t magic;
    uint8_t version;
    uint8_t flags;
    uint32_t hdr_len;
    uint32_t type_off;
    uint32_t type_len;
    uint32_t str_off;
    uint32_t str_len;
};

enum {
    K_INT = 1, K_PTR, K_ARRAY, K_STRUCT, K_UNION, K_ENUM, K_FWD, K_TYPEDEF, K_VOLATILE,
    K_CONST, K_RESTRICT, K_FUNC, K_FUNC_PROTO, K_VAR, K_DATASEC, K_FLOAT, K_DECL_TAG,
    K_TYPE_TAG, K_ENUM64,
};

static unsigned char *read_all(const char *path, size_t *len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return NULL;
    size_t cap = 1 << 20, n = 0;
    unsigned char *buf = malloc(cap);
    for (;;) {
        if (!buf) {
            close(fd);
            errno = ENOMEM;
            return NULL;
        }
        ssize_t r = read(fd, buf + n, cap - n);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            free(buf);
            close(fd);
            return NULL;
        }
        if (r == 0)
            break;
        n += (size_t)r;
        if (n == cap) {
            cap *= 2;
            buf = realloc(buf, cap);
        }
    }
    close(fd);
    *len = n;
    return buf;
}

static int btf_sizes(int argc, char **argv)
{
    const char *path = "/sys/kernel/btf/vmlinux";
    size_t len = 0;
    unsigned char *buf = read_all(path, &len);
    if (!buf) {
        printf(MARK "btf unavailable: %s: %s\n", path, strerror(errno));
        return 1;
    }
    struct btf_hdr h;
    if (len < sizeof(h)) {
        printf(MARK "btf bad: %zu bytes\n", len);
        return 1;
    }
    memcpy(&h, buf, sizeof(h));
    if (h.magic != 0xeB9F || h.hdr_len < sizeof(h) ||
        (uint64_t)h.hdr_len + h.type_off + h.type_len > len ||
        (uint64_t)h.hdr_len + h.str_off + h.str_len > len) {
        printf(MARK "btf bad: magic 0x%x version %u, %zu bytes\n", h.magic, h.version, len);
        return 1;
    }
    const unsigned char *types = buf + h.hdr_len + h.type_off;
    const char *strs = (const char *)buf + h.hdr_len + h.str_off;

    int nwant = argc;
    int *found = calloc((size_t)(nwant ? nwant : 1), sizeof(int));
    uint32_t off = 0, ntypes = 0;
    while (off + 12 <= h.type_len) {
        uint32_t name_off, info, size;
        memcpy(&name_off, types + off, 4);
        memcpy(&info, types + off + 4, 4);
        memcpy(&size, types + off + 8, 4);
        uint32_t kind = (info >> 24) & 0x1f, vlen = info & 0xffff;
        uint32_t extra;
        switch (kind) {
        case K_INT: extra = 4; break;
        case K_ARRAY: extra = 12; break;
        case K_STRUCT: case K_UNION: extra = 12 * vlen; break;
        case K_ENUM: extra = 8 * vlen; break;
        case K_FUNC_PROTO: extra = 8 * vlen; break;
        case K_VAR: extra = 4; break;
        case K_DATASEC: extra = 12 * vlen; break;
        case K_DECL_TAG: extra = 4; break;
        case K_ENUM64: extra = 12 * vlen; break;
        case K_PTR: case K_FWD: case K_TYPEDEF: case K_VOLATILE: case K_CONST: case K_RESTRICT:
        case K_FUNC: case K_FLOAT: case K_TYPE_TAG: extra = 0; break;
        default:
            printf(MARK "btf bad: unknown kind %u at type %u\n", kind, ntypes + 1);
            return 1;
        }
        ntypes++;
        if (kind == K_STRUCT && name_off < h.str_len) {
            const char *name = strs + name_off;
            for (int i = 0; i < nwant; i++) {
                if (!found[i] && strcmp(name, argv[i]) == 0) {
                    found[i] = 1;
                    printf(MARK "btf struct %s size %u members %u\n", name, size, vlen);
                }
            }
        }
        off += 12 + extra;
    }
    for (int i = 0; i < nwant; i++)
        if (!found[i])
            printf(MARK "btf struct %s absent\n", argv[i]);
    printf(MARK "btf parsed %u types, %zu bytes\n", ntypes, len);
    fflush(stdout);
    free(found);
    free(buf);
    return 0;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc >= 2 && strcmp(argv[1], "run") == 0) {
        struct utsname u;
        if (uname(&u) == 0)
            printf(MARK "kernel %s %s %s\n", u.release, u.version, u.machine);
        if (argc >= 3 && strcmp(argv[2], "--markers") == 0)
            setup_markers();
        return run_vm();
    }
    if (argc >= 2 && strcmp(argv[1], "btf") == 0)
        return btf_sizes(argc - 2, argv + 2);
    fprintf(stderr, "usage: kvm_smoke run [--markers] | kvm_smoke btf STRUCT...\n");
    return 2;
}
