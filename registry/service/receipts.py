"""Building retirement receipts from the store (see ``registry.ledger.receipt``)."""

from __future__ import annotations

from sqlmodel import Session

from registry.errors import LedgerError
from registry.ledger.dsse import Envelope
from registry.ledger.entry import Entry
from registry.ledger.receipt import IncludedEntry, RetirementReceipt
from registry.service.ledger import b64, inclusion_proof
from registry.store import ledger_repo
from registry.store.credits_repo import get_or_404
from registry.store.tables import AccountRow, PartyKeyRow, RetirementRow


def _included(session: Session, seq: int, tree_size: int) -> IncludedEntry:
    row = ledger_repo.entry_at(session, seq)
    if row is None:
        raise LedgerError(f"entry {seq} is missing from the store")
    proof = inclusion_proof(session, index=seq, tree_size=tree_size)
    return IncludedEntry(
        seq=seq,
        envelope=b64(row.envelope),
        tree_size=tree_size,
        proof=[b64(h) for h in proof.proof],
    )


def retirement_receipt(session: Session, retirement_id: str) -> RetirementReceipt:
    """The receipt of a retirement against the latest signed checkpoint."""
    retirement = get_or_404(session, RetirementRow, retirement_id, "retirement")
    checkpoint = ledger_repo.latest_checkpoint(session)
    if checkpoint is None:
        raise LedgerError("no checkpoint has been signed")
    row = ledger_repo.entry_at(session, retirement.seq)
    if row is None:
        raise LedgerError(f"entry {retirement.seq} is missing from the store")
    entry = Entry.from_bytes(Envelope.from_bytes(row.envelope).payload)
    instruction = entry.payload["instruction"]
    key = get_or_404(session, PartyKeyRow, instruction["key_id"], "key")
    # The entry that opened the account retired from (its holder never changes after).
    account = get_or_404(session, AccountRow, instruction["body"]["account"], "account")
    return RetirementReceipt(
        retirement_id=retirement_id,
        checkpoint=checkpoint.note,
        retirement=_included(session, retirement.seq, checkpoint.size),
        holder_key=_included(session, key.added_seq, checkpoint.size),
        account=_included(session, account.created_seq, checkpoint.size),
        registry_keys=[
            _included(session, seq, checkpoint.size)
            for seq in ledger_repo.rotation_seqs(session, below=checkpoint.size)
        ],
    )
