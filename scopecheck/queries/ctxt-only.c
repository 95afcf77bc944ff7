/*
 * Test source for queries/ctxt-only.toml ("before" layout of the mini hyp).
 * Functions handed only a struct kvm_cpu_context * must stay inside it.
 *
 *   ruleid: ctxt-only   this line must be reported
 *   ok: ctxt-only       this line must not be reported
 */
#include "types.h"
#include "kvm_host.h"

noinline void q_save_el1(struct kvm_cpu_context *ctxt, u64 sp)
{
	ctxt->sys_regs[SP_EL1] = sp;				/* ok: ctxt-only */
	ctxt->regs.pstate = 0x3c5;				/* ok: ctxt-only */
}

noinline u64 q_escalate(struct kvm_cpu_context *ctxt)
{
	struct kvm_vcpu *vcpu = container_of(ctxt, struct kvm_vcpu, arch.ctxt); /* ruleid: ctxt-only */

	return vcpu->arch.hcr_el2;				/* ruleid: ctxt-only */
}

noinline u64 q_vcpu_param(struct kvm_vcpu *vcpu)
{
	/* not judged by ctxt-only: this function is handed a whole vcpu */
	return vcpu->arch.mdcr_el2;				/* ok: ctxt-only */
}
