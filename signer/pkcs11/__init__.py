"""Keys in an HSM over PKCS#11: module loading and locking (`module`), tokens and their
session pools (`token`), and the key (`key`).
"""

from signer.pkcs11.key import SECP256K1_OID, SECP256K1_PARAMS, HsmKey, private_key_template
from signer.pkcs11.module import SOFTHSM_MODULE_PATHS, find_softhsm_module, open_module_users
from signer.pkcs11.token import Hsm, Token

__all__ = [
    "SECP256K1_OID",
    "SECP256K1_PARAMS",
    "SOFTHSM_MODULE_PATHS",
    "Hsm",
    "HsmKey",
    "Token",
    "find_softhsm_module",
    "open_module_users",
    "private_key_template",
]
