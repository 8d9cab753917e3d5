"""Settlement bookkeeping: which messages each request carries, what becomes of each, and which upstream
revision was last applied per observable.

A batch's `Ledger` holds one account per observable (its messages). Every request that carries an observable
opens a claim on its account; each answer closes the claim with a resolution, and the account's resolution is
the most cautious one any claim ended with — give back to the bus (another try may fix it) over dead-letter
(nothing will) over complete — so an observable spread over several requests settles once, after the last.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from enum import IntEnum
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
M = TypeVar("M")


class Resolution(IntEnum):
    """How an observable's messages end, in increasing precedence."""

    COMPLETE = 0
    DEAD_LETTER = 1
    ABANDON = 2


@dataclass
class Account(Generic[M]):
    messages: list[M]
    revision: datetime
    claims: int = 0
    resolution: Resolution = Resolution.COMPLETE
    reason: str = ""
    description: str = ""


@dataclass(frozen=True)
class Settled(Generic[K, M]):
    key: K
    account: Account[M]


@dataclass
class Ledger(Generic[K, M]):
    accounts: dict[K, Account[M]] = field(default_factory=dict)

    def open(self, key: K, messages: list[M], revision: datetime) -> None:
        self.accounts[key] = Account(messages, revision)

    def claim(self, keys: Iterable[K]) -> None:
        """A request carries these observables: they settle only once it is answered."""
        for key in keys:
            self.accounts[key].claims += 1

    def answer(self, keys: Iterable[K], resolution: Resolution, reason: str = "", description: str = "") -> None:
        """A request that carried these observables ended so (COMPLETE also releases a claim a split replaced)."""
        for key in keys:
            account = self.accounts[key]
            account.claims -= 1
            self.decide(key, resolution, reason, description)

    def decide(self, key: K, resolution: Resolution, reason: str = "", description: str = "") -> None:
        """What becomes of an observable, merged with what its other requests decided."""
        account = self.accounts[key]
        if resolution > account.resolution:
            account.resolution, account.reason, account.description = resolution, reason, description

    def give_back(self) -> None:
        """Something went wrong mid-batch: whatever its requests did, every observable goes back to the bus."""
        for key, account in self.accounts.items():
            account.claims = 0
            self.decide(key, Resolution.ABANDON)

    @property
    def open_claims(self) -> int:
        return sum(account.claims for account in self.accounts.values())

    @property
    def messages(self) -> int:
        return sum(len(account.messages) for account in self.accounts.values())

    def settled(self) -> Iterator[Settled[K, M]]:
        """Every account, once no request is left unanswered."""
        if self.open_claims:
            raise RuntimeError("the batch still has requests unanswered")
        return (Settled(key, account) for key, account in self.accounts.items())


class Revisions(Generic[K]):
    """The newest upstream revision (indicator time) applied per observable, for the most recent `capacity`.

    A message that comes back after a newer revision of its observable was applied — a dead publisher's lock
    lapsed, a replayed dead letter — is stale: applying it would undo the newer one (e.g. revive a revoked
    observable). Kept in the process: stale messages come back within a lock period, to whoever holds the
    subscription then; a replica that never saw the newer revision cannot tell (README, known limits).
    """

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._newest: OrderedDict[K, datetime] = OrderedDict()

    def is_stale(self, key: K, revision: datetime) -> bool:
        newest = self._newest.get(key)
        return newest is not None and revision < newest

    def record(self, key: K, revision: datetime) -> None:
        newest = self._newest.pop(key, None)
        self._newest[key] = revision if newest is None else max(newest, revision)
        while len(self._newest) > self._capacity:
            self._newest.popitem(last=False)
