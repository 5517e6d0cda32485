"""What a run or a request needs: the settings and the clients for storage and Graph."""

from __future__ import annotations

from dataclasses import dataclass

from shared.graph import GraphClients
from shared.settings import Settings
from sync.audit import AuditLog
from sync.directory import DirectoryReader
from sync.events import EventPublisher
from sync.excluded import ExcludedStore
from sync.grants import GrantStore
from sync.onboarding import ConsentStateStore
from sync.roster import RosterStore
from sync.store import SyncStore


@dataclass
class SyncContext:
    """Settings and clients for one invocation (the Graph pool may outlive it)."""

    settings: Settings
    store: SyncStore
    roster: RosterStore
    graph: GraphClients
    audit: AuditLog
    events: EventPublisher
    grants: GrantStore
    consents: ConsentStateStore
    excluded: ExcludedStore

    @classmethod
    def create(cls, settings: Settings, graph: GraphClients | None = None) -> SyncContext:
        """Clients for these settings (Graph clients may be shared across contexts)."""
        return cls(
            settings,
            SyncStore(settings),
            RosterStore(settings),
            graph or GraphClients(settings),
            AuditLog(settings),
            EventPublisher(settings),
            GrantStore(settings),
            ConsentStateStore(settings),
            ExcludedStore(settings),
        )

    def reader(self, tenant_id: str) -> DirectoryReader:
        """A directory reader for one tenant: one per run or request, so its request count is theirs."""
        return DirectoryReader(self.graph.for_tenant(tenant_id))

    async def aclose(self) -> None:
        """Close the storage clients (the Graph pool belongs to its owner)."""
        await self.store.aclose()
        await self.roster.aclose()
        await self.audit.aclose()
        await self.grants.aclose()
        await self.consents.aclose()
        await self.excluded.aclose()
