"""Machine enrollment: how a machine proves who it is before it gets a credential (issue 13).

`tpm.py` (pure): TPM 2.0 structures, MakeCredential without a TPM, quote verification.
`store.py`: the enrollment tables (EKs/AKs per machine, challenges, site policies).
`attest.py`: the TPM protocol (first boot → pending → approval → ActivateCredential → quote → credential).
`tokens.py`: one-time enrollment tokens (machines without a TPM, VMs netslate creates).
"""
