/*
 * Test source for queries/rfc-hyp-scope.toml, built with the mini hyp's
 * headers in its "before" (Linux 6.1) layout: the RFC's hyp fields are loose
 * in kvm_vcpu_arch and matched through the query's virtual group.
 *
 *   ruleid: rfc-hyp-scope   this line must be reported
 *   ok: rfc-hyp-scope       this line must not be reported
 */
#include "types.h"
#include "kvm_host.h"

noinline u64 q_ctxt_only(struct kvm_vcpu *vcpu)
{
	vcpu->arch.ctxt.regs.pc += 4;				/* ok: rfc-hyp-scope */
	return vcpu->arch.ctxt.sys_regs[ESR_EL1];		/* ok: rfc-hyp-scope */
}

noinline void q_hyp_fields(struct kvm_vcpu *vcpu, u64 esr)
{
	vcpu->arch.hcr_el2 |= BIT(8);				/* ok: rfc-hyp-scope */
	vcpu->arch.fault.esr_el2 = esr;				/* ok: rfc-hyp-scope */
	vcpu->arch.iflags = 1;					/* ok: rfc-hyp-scope */
}

noinline int q_direct_leak(struct kvm_vcpu *vcpu)
{
	return vcpu->vcpu_id;					/* ruleid: rfc-hyp-scope */
}

noinline void q_alias_leak(struct kvm_vcpu *vcpu)
{
	struct kvm_vcpu_arch *a = &vcpu->arch;

	a->mp_state = KVM_MP_STATE_STOPPED;			/* ruleid: rfc-hyp-scope */
	a->ctxt.regs.sp = 0;					/* ok: rfc-hyp-scope */
}

noinline u64 q_debug_leak(struct kvm_vcpu *vcpu, int i)
{
	return vcpu->arch.vcpu_debug_state.dbg_bcr[i & 15];	/* ruleid: rfc-hyp-scope */
}
