"""scopecheck: which fields of struct kvm_vcpu does arm64 nVHE/pKVM hyp code touch?

The library is usable without the CLI::

    from scopecheck.layout import load_layouts
    layouts = load_layouts("vmlinux", ["kvm_vcpu"])
    layouts["kvm_vcpu"].fields_at(0x7a0, 8)
"""

__version__ = "0.1.0"
