/*
 * Test source for queries/pkvm-hyp-vcpu.toml ("before" layout of the mini hyp):
 * hyp's own copy of a protected vcpu, struct pkvm_hyp_vcpu, embeds a whole
 * kvm_vcpu (Linux 6.12 style).
 *
 *   ruleid: pkvm-hyp-vcpu   this line must be reported
 *   ok: pkvm-hyp-vcpu       this line must not be reported
 */
#include "types.h"
#include "kvm_host.h"

noinline void q_load(struct pkvm_hyp_vcpu *hyp_vcpu, u32 cpu)
{
	hyp_vcpu->loaded_cpu = cpu;				/* ok: pkvm-hyp-vcpu */
	hyp_vcpu->vcpu.arch.ctxt.regs.pc = 0;			/* ok: pkvm-hyp-vcpu */
	hyp_vcpu->vcpu.arch.hcr_el2 = hyp_vcpu->host_vcpu->arch.hcr_el2; /* ok: pkvm-hyp-vcpu */
}

noinline int q_copy_mp_state(struct pkvm_hyp_vcpu *hyp_vcpu)
{
	hyp_vcpu->vcpu.arch.mp_state = KVM_MP_STATE_RUNNABLE;	/* ruleid: pkvm-hyp-vcpu */
	return hyp_vcpu->vcpu.vcpu_id;				/* ruleid: pkvm-hyp-vcpu */
}
