/*
 * Test source for queries/pkvm-host-boundary.toml ("before" layout of the mini hyp):
 * every access to host-owned kvm_vcpu / kvm memory is a boundary crossing (a read is
 * untrusted input, a write hands state to the host); hyp's own copy is not.
 *
 *   ruleid: pkvm-host-boundary   this line must be reported
 *   ok: pkvm-host-boundary       this line must not be reported
 */
#include "types.h"
#include "kvm_host.h"

#define DECLARE_REG(type, name, ctxt, reg)	type name = (type)((ctxt)->regs.regs[(reg)])

static inline unsigned long __kern_hyp_va(unsigned long v)
{
	return v & 0x0000ffffffffffffUL;
}
#define kern_hyp_va(v)	((typeof(v))(__kern_hyp_va((unsigned long)(v))))

noinline void q_flush(struct pkvm_hyp_vcpu *hyp_vcpu)
{
	struct kvm_vcpu *host_vcpu = hyp_vcpu->host_vcpu;		/* ok: pkvm-host-boundary */

	hyp_vcpu->vcpu.arch.ctxt = host_vcpu->arch.ctxt;		/* ruleid: pkvm-host-boundary */
	hyp_vcpu->vcpu.arch.sve_state = kern_hyp_va(host_vcpu->arch.sve_state); /* ruleid: pkvm-host-boundary */
	hyp_vcpu->vcpu.arch.ctxt.__hyp_running_vcpu = NULL;		/* ok: pkvm-host-boundary */
}

noinline void q_sync(struct pkvm_hyp_vcpu *hyp_vcpu)
{
	struct kvm_vcpu *host_vcpu = hyp_vcpu->host_vcpu;		/* ok: pkvm-host-boundary */
	struct vgic_cpu_model *host_if = &host_vcpu->arch.vgic_cpu;	/* ok: pkvm-host-boundary */
	unsigned int i;

	host_vcpu->arch.ctxt = hyp_vcpu->vcpu.arch.ctxt;		/* ruleid: pkvm-host-boundary */
	for (i = 0; i < hyp_vcpu->vcpu.arch.vgic_cpu.used_lrs; i++)	/* ok: pkvm-host-boundary */
		host_if->vgic_lr[i] = hyp_vcpu->vcpu.arch.vgic_cpu.vgic_lr[i]; /* ruleid: pkvm-host-boundary */
}

/* only ever called with a host pointer: its parameter is host-owned */
static noinline u32 q_host_mp_state(struct kvm_vcpu *vcpu)
{
	return vcpu->arch.mp_state;					/* ruleid: pkvm-host-boundary */
}

noinline int q_hcall(struct kvm_cpu_context *host_ctxt)
{
	DECLARE_REG(struct kvm_vcpu *, host_vcpu, host_ctxt, 1);	/* ok: pkvm-host-boundary */
	u64 nr = host_ctxt->regs.regs[2];				/* ok: pkvm-host-boundary */

	host_vcpu = kern_hyp_va(host_vcpu);
	if (host_vcpu->kvm->arch.nr_vcpus < nr)			/* ruleid: pkvm-host-boundary */
		return -1;
	return q_host_mp_state(host_vcpu);
}
