"""Seeded generator of demo tenants that look like a real company's Entra ID directory.

`build_tenant` is deterministic for (tenant_id, users, groups, seed): object ids are uuid5
values derived from the tenant id and the object's ordinal, attributes come from one
`random.Random(seed)`. The mess a sync has to cope with sits at documented places, listed in
`Tenant.landmarks` (see `model.Landmarks`):

* "All Staff" (landmarks.big_group_id): mail-enabled security group whose members are the three
  office groups ("Office - Redmond/London/Singapore", ~75 % of users) plus a few direct users,
  so its transitive user count is > 999 from about 1,400 users up.
* landmarks.nested_chain: "Engineering - All" ⊃ "Engineering - Platform" ⊃ "Engineering - Platform SRE".
* landmarks.cycle_group_ids: "Project Phoenix - Core" ⊃ "- Extended" ⊃ "- Steering" ⊃ "- Core".
* landmarks.empty_group_id: "Archive - 2019 Offsite", no members.
* landmarks.mixed_members_group_id: "IT - Managed Assets", with users, a group, devices,
  org contacts and service principals as direct members.
* landmarks.guests_group_id: "Vendors - Guests", a Microsoft 365 group holding guests.
* Department groups "Dept - <name>" (security, all users of the department, mess included),
  team/project groups of every kind, a distribution list of org contacts and a room list.
* About 10 % of users are ineligible: guests (~3 %), disabled (~3 %), unlicensed (~2 %),
  shared/room/equipment mailboxes (~1.5 %, licensed and enabled when shared, so only
  mailboxSettings.userPurpose reveals them) and `svc-` service accounts (~0.5 %).
  About 1 % are normal members without mail, and one member has a guest-like #EXT# UPN.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta

import msgspec

from devtools.demo_tenant.licensing import (
    ENTERPRISEPACK,
    POWER_BI_PRO,
    SPB,
    SPE_E3,
    SPE_E5,
    TEAMS,
    CapabilityStatus,
)
from devtools.demo_tenant.model import (
    AssignedLicense,
    Device,
    Group,
    Landmarks,
    OrgContact,
    ServicePrincipal,
    Tenant,
    User,
    UserPurpose,
    plans_for,
)

# (name, share of staff, job titles)
_DEPARTMENTS: tuple[tuple[str, float, tuple[str, ...]], ...] = (
    (
        "Engineering",
        0.22,
        (
            "Software Engineer",
            "Senior Software Engineer",
            "Engineering Manager",
            "Principal Engineer",
            "QA Engineer",
        ),
    ),
    ("Sales", 0.16, ("Account Executive", "Sales Representative", "Sales Manager", "Sales Engineer")),
    ("Customer Support", 0.12, ("Support Engineer", "Support Specialist", "Support Team Lead")),
    ("Operations", 0.10, ("Operations Analyst", "Operations Manager", "Logistics Coordinator")),
    ("Marketing", 0.08, ("Marketing Specialist", "Content Writer", "Marketing Manager", "Designer")),
    ("Finance", 0.06, ("Accountant", "Financial Analyst", "Controller", "Payroll Specialist")),
    ("IT", 0.06, ("Systems Administrator", "IT Support Technician", "Network Engineer", "IT Manager")),
    ("HR", 0.04, ("HR Generalist", "Recruiter", "HR Business Partner")),
    ("Research", 0.05, ("Research Scientist", "Data Scientist", "Research Lead")),
    ("Product", 0.05, ("Product Manager", "Product Owner", "UX Researcher")),
    ("Legal", 0.03, ("Counsel", "Paralegal", "Compliance Officer")),
    ("Facilities", 0.03, ("Facilities Coordinator", "Office Manager", "Security Officer")),
)
# (office, share of staff); None = remote, in no office group
_OFFICES: tuple[tuple[str | None, float], ...] = (
    ("Redmond", 0.40),
    ("London", 0.22),
    ("Singapore", 0.13),
    (None, 0.25),
)
_FIRST_NAMES = (
    "Adele",
    "Alex",
    "Allan",
    "Amara",
    "Ana",
    "Arjun",
    "Beatriz",
    "Ben",
    "Bianca",
    "Carlos",
    "Chen",
    "Chloe",
    "Daniel",
    "Diego",
    "Elena",
    "Emily",
    "Emma",
    "Fatima",
    "Felix",
    "Grace",
    "Hannah",
    "Hiro",
    "Ines",
    "Isaac",
    "Isabella",
    "Ivan",
    "Jamal",
    "Jana",
    "Javier",
    "Jin",
    "Johanna",
    "Jonas",
    "Julia",
    "Kai",
    "Karin",
    "Laura",
    "Lee",
    "Leila",
    "Liam",
    "Lidia",
    "Lucas",
    "Lynne",
    "Maya",
    "Megan",
    "Miguel",
    "Mina",
    "Nestor",
    "Nia",
    "Noah",
    "Olga",
    "Omar",
    "Patti",
    "Pedro",
    "Priya",
    "Quinn",
    "Rafael",
    "Ravi",
    "Rosa",
    "Sami",
    "Sara",
    "Sofia",
    "Sven",
    "Tariq",
    "Tess",
    "Tom",
    "Uma",
    "Valeria",
    "Victor",
    "Wei",
    "Yara",
    "Yusuf",
    "Zoe",
)
_SURNAMES = (
    "Abara",
    "Andersen",
    "Bauer",
    "Bianchi",
    "Brown",
    "Castillo",
    "Chen",
    "Cohen",
    "Costa",
    "Dubois",
    "Eriksen",
    "Fernandes",
    "Fischer",
    "Garcia",
    "Gupta",
    "Haddad",
    "Hansen",
    "Horvat",
    "Ibrahim",
    "Ito",
    "Jansen",
    "Johnson",
    "Kaur",
    "Kim",
    "Kowalski",
    "Larsen",
    "Lee",
    "Lopez",
    "Martin",
    "Meyer",
    "Moreau",
    "Murphy",
    "Nakamura",
    "Nguyen",
    "Novak",
    "Okafor",
    "Olsen",
    "Patel",
    "Pereira",
    "Petrov",
    "Quinn",
    "Rossi",
    "Santos",
    "Schmidt",
    "Silva",
    "Singh",
    "Smith",
    "Sorensen",
    "Suzuki",
    "Tanaka",
    "Taylor",
    "Torres",
    "Vargas",
    "Wagner",
    "Walker",
    "Wang",
    "Weber",
    "Wilber",
    "Williams",
    "Wong",
    "Yamamoto",
    "Young",
    "Zhang",
    "Zimmerman",
)
_TEAM_TOPICS = (
    "Atlas",
    "Beacon",
    "Cobalt",
    "Delta",
    "Ember",
    "Falcon",
    "Granite",
    "Harbor",
    "Iris",
    "Juniper",
    "Keystone",
    "Lumen",
    "Meridian",
    "Nimbus",
    "Orion",
    "Pioneer",
    "Quartz",
    "Redwood",
    "Summit",
    "Tidal",
    "Umbra",
    "Vertex",
    "Willow",
    "Zephyr",
    "EMEA",
    "APAC",
    "Americas",
    "Onboarding",
    "Quarterly Review",
    "Hiring",
    "Budget",
    "Roadmap",
    "Tooling",
    "Training",
    "Wellbeing",
    "Events",
    "Partners",
    "Renewals",
    "Audit",
    "Migration",
)
_EXTERNAL_DOMAINS = (
    "fabrikam.com",
    "northwindtraders.com",
    "adatum.com",
    "tailspintoys.com",
    "litware.com",
    "gmail.com",
)
_SHARED_MAILBOX_NAMES = (
    "Info",
    "Sales Inbox",
    "Support Desk",
    "Billing",
    "Careers",
    "Press",
    "Helpdesk",
    "Orders",
    "Invoices",
    "Feedback",
)
_ROOM_NAMES = (
    "Conf Room Rainier",
    "Conf Room Baker",
    "Conf Room Adams",
    "Conf Room Hood",
    "Conf Room Olympus",
    "Board Room",
    "Focus Room 1",
    "Focus Room 2",
)
_EQUIPMENT_NAMES = ("Projector Cart", "Pool Car 1", "Pool Car 2", "Camera Kit", "Demo Laptop")
_SERVICE_NAMES = (
    "backup",
    "scanner",
    "sql-reporting",
    "crm-sync",
    "print",
    "monitoring",
    "build-agent",
    "hr-import",
    "sso-bridge",
    "ticketing",
)
_DEVICE_OS = (
    ("Windows", "10.0.22631"),
    ("Windows", "10.0.19045"),
    ("MacMDM", "14.4"),
    ("iOS", "17.4"),
    ("Android", "14"),
)
_SMALL_COMPANY = 500  # users; up to this size the main licence is Business Premium (SPB), else E3

_FIXED_GROUPS = 15  # landmark groups every tenant gets, whatever its size
# Which team kinds may nest an earlier team of which kind (see model.Tenant.check_member).
_NESTABLE_KINDS: dict[str, tuple[str, ...]] = {
    "microsoft365": (),
    "security": ("security",),
    "mailEnabledSecurity": ("mailEnabledSecurity", "distribution"),
    "distribution": ("mailEnabledSecurity", "distribution"),
}
_MIN_USERS = 20  # the landmarks (a guest, a shared mailbox, a service account, ...) still fit


class DemoTenantSpec(msgspec.Struct, frozen=True, kw_only=True):
    """A fixed demo tenant: its GUID, name and generator settings."""

    tenant_id: str
    display_name: str
    users: int
    groups: int
    seed: int


DEMO_TENANTS: tuple[DemoTenantSpec, ...] = (
    DemoTenantSpec(
        tenant_id="840fa9a3-916c-42ac-99ab-a1e9158955c5",
        display_name="Contoso",
        users=2000,
        groups=60,
        seed=1,
    ),
    DemoTenantSpec(
        tenant_id="8efef433-65df-437f-9283-e2a918a80821",
        display_name="Fabrikam",
        users=300,
        groups=25,
        seed=2,
    ),
)
"""Contoso is the default tenant; Fabrikam is a second, smaller one for multi-tenant routing."""


def build_demo_tenants(*, users: int | None = None, groups: int | None = None) -> list[Tenant]:
    """Build the fixed demo tenants; `users`/`groups` override the first (default) tenant's size."""
    tenants = []
    for index, spec in enumerate(DEMO_TENANTS):
        size_users = users if (index == 0 and users is not None) else spec.users
        size_groups = groups if (index == 0 and groups is not None) else spec.groups
        tenants.append(
            build_tenant(
                spec.tenant_id, spec.display_name, users=size_users, groups=size_groups, seed=spec.seed
            )
        )
    return tenants


def _slug(text: str) -> str:
    return "".join(ch for ch in text.lower().replace(" ", "-") if ch.isalnum() or ch in "-.")


def _nickname(text: str) -> str:
    return "".join(ch for ch in text if ch.isalnum())


class _Ids:
    """Deterministic GUIDs: uuid5 of the tenant namespace and a per-kind ordinal."""

    def __init__(self, tenant_id: str) -> None:
        self._namespace = uuid.UUID(tenant_id)

    def make(self, kind: str, ordinal: int) -> str:
        return str(uuid.uuid5(self._namespace, f"{kind}:{ordinal}"))


def build_tenant(
    tenant_id: str, display_name: str, *, users: int = 2000, groups: int = 60, seed: int = 1
) -> Tenant:
    """Generate a tenant with `users` users and `groups` (>= 19) groups, deterministically for a seed."""
    if users < _MIN_USERS:
        raise ValueError(f"a demo tenant needs at least {_MIN_USERS} users")
    department_count = min(len(_DEPARTMENTS), max(4, (groups - _FIXED_GROUPS) // 2))
    if groups < _FIXED_GROUPS + department_count:
        raise ValueError(f"a demo tenant needs at least {_FIXED_GROUPS + 4} groups")
    return _Builder(tenant_id, display_name, users, groups, department_count, seed).build()


class _Builder:
    """Holds the generation state; `build()` runs the steps in a fixed order (determinism)."""

    def __init__(
        self,
        tenant_id: str,
        display_name: str,
        user_count: int,
        group_count: int,
        department_count: int,
        seed: int,
    ) -> None:
        self.rng = random.Random(seed)
        self.ids = _Ids(tenant_id)
        self.tenant_id = tenant_id
        self.display_name = display_name
        self.user_count = user_count
        self.group_count = group_count
        self.departments = _DEPARTMENTS[:department_count]
        base = _slug(display_name) or "tenant"
        self.domain = f"{base}.com"
        self.initial_domain = f"{base}.onmicrosoft.com"
        self.epoch = datetime(2018, 1, 1, tzinfo=UTC)
        self.users: dict[str, User] = {}
        self.groups: dict[str, Group] = {}
        self.members: dict[str, list[str]] = {}
        self.devices: dict[str, Device] = {}
        self.contacts: dict[str, OrgContact] = {}
        self.service_principals: dict[str, ServicePrincipal] = {}
        self.used_upns: dict[str, int] = {}
        self.main_sku = SPB if user_count <= _SMALL_COMPANY else SPE_E3
        # The realism added later (plans, external members, hidden groups) draws from its own
        # generator, so the seeded names and memberships of earlier releases stay as they were.
        self.extra_rng = random.Random(f"{seed}:fidelity")
        self.by_department: dict[str, list[str]] = {name: [] for name, _, _ in self.departments}
        self.by_office: dict[str, list[str]] = {office: [] for office, _ in _OFFICES if office}
        self.category: dict[str, str] = {}  # user id -> landmark category ("normal" when none)
        self.suspended_ids: frozenset[str] = frozenset()
        self.external_ids: frozenset[str] = frozenset()
        self.group_ordinal = 0

    # ------------------------------------------------------------------ helpers

    def created(self) -> str:
        moment = self.epoch + timedelta(seconds=self.rng.randrange(0, 6 * 365 * 86400))
        return moment.strftime("%Y-%m-%dT%H:%M:%SZ")

    def unique_local_part(self, local: str) -> str:
        count = self.used_upns.get(local, 0)
        self.used_upns[local] = count + 1
        return local if count == 0 else f"{local}{count + 1}"

    def unique_external_mail(self, given: str, surname: str, external_domain: str) -> str:
        key = f"{given}.{surname}@{external_domain}".lower()
        count = self.used_upns.get(key, 0)
        self.used_upns[key] = count + 1
        local = f"{given}.{surname}" if count == 0 else f"{given}.{surname}{count + 1}"
        return f"{local}@{external_domain}".lower()

    def licenses(self, premium_share: float = 0.1, main: str | None = None) -> tuple[AssignedLicense, ...]:
        main_sku = SPE_E5.sku_id if self.rng.random() < premium_share else (main or self.main_sku.sku_id)
        # Some people have Teams switched off in their suite (a disabled plan).
        disabled = (TEAMS.plan_id,) if self.extra_rng.random() < 0.05 else ()
        first = AssignedLicense(sku_id=main_sku, disabled_plans=disabled)
        if self.rng.random() < 0.15:
            return (first, AssignedLicense(sku_id=POWER_BI_PRO.sku_id))
        return (first,)

    def add_group(
        self, display_name: str, kind: str, description: str | None, member_ids: Iterable[str] = ()
    ) -> str:
        group_id = self.ids.make("group", self.group_ordinal)
        self.group_ordinal += 1
        nickname = _nickname(display_name) or f"group{self.group_ordinal}"
        mail_enabled = kind in ("microsoft365", "distribution", "mailEnabledSecurity")
        self.groups[group_id] = Group(
            id=group_id,
            display_name=display_name,
            description=description,
            mail=f"{nickname}@{self.domain}" if mail_enabled else None,
            mail_enabled=mail_enabled,
            security_enabled=kind in ("security", "mailEnabledSecurity"),
            group_types=("Unified",) if kind == "microsoft365" else (),
            mail_nickname=nickname,
            created_date_time=self.created(),
            visibility=("Private" if self.rng.random() < 0.3 else "Public")
            if kind == "microsoft365"
            else None,
        )
        self.members[group_id] = list(dict.fromkeys(member_ids))
        return group_id

    def pick(self, pool: Sequence[str], count: int) -> list[str]:
        return self.rng.sample(pool, min(count, len(pool)))

    # -------------------------------------------------------------------- users

    def build_users(self) -> None:
        n = self.user_count
        counts = {
            "guest": max(2, round(n * 0.03)),
            "disabled": max(2, round(n * 0.03)),
            "unlicensed": max(2, round(n * 0.02)),
            "shared": max(2, round(n * 0.008)),
            "room": max(2, round(n * 0.005)),
            "equipment": max(1, round(n * 0.002)),
            "service": max(2, round(n * 0.005)),
            "no_mail": max(2, round(n * 0.01)),
            "guest_like": 1,
        }
        categories = ["normal"] * n
        positions = self.rng.sample(range(n), sum(counts.values()))
        cursor = 0
        for category, count in counts.items():
            for position in positions[cursor : cursor + count]:
                categories[position] = category
            cursor += count

        department_names = [name for name, _, _ in self.departments]
        department_weights = [weight for _, weight, _ in self.departments]
        titles = {name: roles for name, _, roles in self.departments}
        office_names = [office for office, _ in _OFFICES]
        office_weights = [weight for _, weight in _OFFICES]
        rng = self.rng
        departments = rng.choices(department_names, department_weights, k=n)
        offices = rng.choices(office_names, office_weights, k=n)
        counters = {"shared": 0, "room": 0, "equipment": 0, "service": 0}

        for ordinal in range(n):
            user_id = self.ids.make("user", ordinal)
            category = categories[ordinal]
            department: str | None = departments[ordinal]
            office = offices[ordinal]
            if category in ("guest", "room", "equipment"):
                department, office = None, None
            if category == "service":
                department = "IT" if "IT" in self.by_department else department_names[0]
                office = None
            user = self.make_user(user_id, category, department, office, titles, counters)
            self.users[user_id] = user
            self.category[user_id] = category
            if department is not None:
                self.by_department[department].append(user_id)
            if office is not None:
                self.by_office[office].append(user_id)

    def make_user(
        self,
        user_id: str,
        category: str,
        department: str | None,
        office: str | None,
        titles: dict[str, tuple[str, ...]],
        counters: dict[str, int],
    ) -> User:
        rng = self.rng
        created = self.created()
        if category in ("shared", "room", "equipment", "service"):
            index = counters[category]
            counters[category] += 1
            names = {
                "shared": _SHARED_MAILBOX_NAMES,
                "room": _ROOM_NAMES,
                "equipment": _EQUIPMENT_NAMES,
                "service": _SERVICE_NAMES,
            }[category]
            base = names[index % len(names)]
            display = base if index < len(names) else f"{base} {index // len(names) + 1}"
            if category == "service":
                display = f"svc-{display.replace(' ', '-')}"
            local = self.unique_local_part(_slug(display))
            upn = f"{local}@{self.domain}"
            purpose: UserPurpose = "user" if category == "service" else category  # type: ignore[assignment]
            licensed = category in ("shared", "service") or index % 2 == 0
            return User(
                id=user_id,
                user_principal_name=upn,
                display_name=display,
                mail=upn,
                department=department,
                job_title=None,
                office_location=office,
                user_type="Member",
                account_enabled=True,
                assigned_licenses=self.licenses(main=ENTERPRISEPACK.sku_id) if licensed else (),
                created_date_time=created,
                user_purpose=purpose,
            )

        given = rng.choice(_FIRST_NAMES)
        surname = rng.choice(_SURNAMES)
        job_title = rng.choice(titles[department]) if department else None
        phone = f"+1 425 555 {rng.randrange(10000):04d}"
        if category == "guest":
            external = rng.choice(_EXTERNAL_DOMAINS)
            external_mail = self.unique_external_mail(given, surname, external)
            return User(
                id=user_id,
                user_principal_name=guest_principal_name(external_mail, self.initial_domain),
                display_name=f"{given} {surname} ({external.split('.')[0].capitalize()})",
                given_name=given,
                surname=surname,
                mail=external_mail,
                user_type="Guest",
                account_enabled=True,
                assigned_licenses=(),
                created_date_time=created,
                user_purpose=None,
            )
        local = self.unique_local_part(f"{given}.{surname}".lower())
        mail = f"{local}@{self.domain}"
        upn = mail
        if category == "guest_like":
            # A converted B2B account: userType says Member, the UPN still says guest.
            upn = guest_principal_name(
                self.unique_external_mail(given, surname, _EXTERNAL_DOMAINS[0]), self.initial_domain
            )
        licensed = category != "unlicensed"
        return User(
            id=user_id,
            user_principal_name=upn,
            display_name=f"{given} {surname}",
            given_name=given,
            surname=surname,
            mail=None if category == "no_mail" else mail,
            department=department,
            job_title=job_title,
            office_location=office or "Remote",
            mobile_phone=phone if rng.random() < 0.6 else None,
            business_phones=(phone,),
            preferred_language="en-US",
            user_type="Member",
            account_enabled=category != "disabled",
            assigned_licenses=self.licenses() if licensed else (),
            created_date_time=created,
            user_purpose="user" if licensed else None,
        )

    # ------------------------------------------------------------ other objects

    def build_other_objects(self) -> None:
        n = self.user_count
        for ordinal in range(max(5, min(2000, n // 50))):
            os_name, os_version = _DEVICE_OS[ordinal % len(_DEVICE_OS)]
            device_id = self.ids.make("device", ordinal)
            self.devices[device_id] = Device(
                id=device_id,
                display_name=f"{self.display_name.upper()[:4]}-{os_name[:3].upper()}-{ordinal:05d}",
                device_id=self.ids.make("device-id", ordinal),
                operating_system=os_name,
                operating_system_version=os_version,
            )
        for ordinal in range(max(5, min(1000, n // 100))):
            contact_id = self.ids.make("contact", ordinal)
            given = self.rng.choice(_FIRST_NAMES)
            surname = self.rng.choice(_SURNAMES)
            company = self.rng.choice(_EXTERNAL_DOMAINS[:-1])
            self.contacts[contact_id] = OrgContact(
                id=contact_id,
                display_name=f"{given} {surname} ({company})",
                mail=f"{given}.{surname}@{company}".lower(),
                given_name=given,
                surname=surname,
                company_name=company.split(".")[0].capitalize(),
            )
        for ordinal in range(max(3, min(200, n // 500))):
            sp_id = self.ids.make("service-principal", ordinal)
            self.service_principals[sp_id] = ServicePrincipal(
                id=sp_id,
                display_name=f"{_SERVICE_NAMES[ordinal % len(_SERVICE_NAMES)].replace('-', ' ').title()} App",
                app_id=self.ids.make("app", ordinal),
            )

    # ------------------------------------------------------------------- groups

    def build_groups(self) -> Landmarks:
        users_by_category: dict[str, list[str]] = {}
        for user_id, category in self.category.items():
            users_by_category.setdefault(category, []).append(user_id)
        normal = users_by_category["normal"]
        remote_normal = [uid for uid in normal if self.users[uid].office_location == "Remote"]

        # The big group: offices nested under "All Staff", plus a few direct (remote) members.
        office_ids = [
            self.add_group(
                f"Office - {office}", "mailEnabledSecurity", f"Everyone based in {office}", members
            )
            for office, members in self.by_office.items()
        ]
        big_group_id = self.add_group(
            "All Staff",
            "mailEnabledSecurity",
            "Company-wide announcements",
            office_ids + self.pick(remote_normal, 5),
        )

        engineering = self.by_department.get("Engineering") or normal
        chain_l3 = self.add_group(
            "Engineering - Platform SRE", "security", "Site reliability on-call", self.pick(engineering, 6)
        )
        chain_l2 = self.add_group(
            "Engineering - Platform", "security", "Platform teams", [chain_l3, *self.pick(engineering, 8)]
        )
        # "Engineering - All" and "Project Phoenix - Core" hold groups, so they are security groups: a
        # Microsoft 365 group holds users only. Each was a Microsoft 365 group once and drew its
        # visibility from the seeded sequence; the draw stays so every later name stays the same.
        chain_l1 = self.add_group(
            "Engineering - All",
            "security",
            "All engineering teams",
            [chain_l2, *self.pick(engineering, 10)],
        )
        self.rng.random()

        cycle_core = self.add_group(
            "Project Phoenix - Core", "security", "Phoenix core team", self.pick(normal, 5)
        )
        self.rng.random()
        cycle_extended = self.add_group(
            "Project Phoenix - Extended",
            "security",
            "Phoenix extended team",
            [cycle_core, *self.pick(normal, 4)],
        )
        cycle_steering = self.add_group(
            "Project Phoenix - Steering",
            "security",
            "Phoenix steering committee",
            [cycle_extended, *self.pick(normal, 3)],
        )
        # Close the loop: Core contains Steering, so Core ⊃ Steering ⊃ Extended ⊃ Core.
        self.members[cycle_core].insert(0, cycle_steering)

        empty_group_id = self.add_group(
            "Archive - 2019 Offsite", "microsoft365", "Old event team, kept for the files", []
        )

        service_accounts = users_by_category["service"]
        mixed_members = [
            *self.pick(normal, 3),
            *service_accounts[:2],
            chain_l3,
            *list(self.devices)[:3],
            *list(self.contacts)[:2],
            *list(self.service_principals)[:2],
        ]
        mixed_group_id = self.add_group(
            "IT - Managed Assets", "security", "Devices, apps and people IT manages", mixed_members
        )

        self.add_group(
            "Partners - External Contacts",
            "distribution",
            "Partner contacts list",
            [*list(self.contacts)[: max(5, len(self.contacts) // 2)], *self.pick(normal, 3)],
        )
        guests = users_by_category["guest"]
        guests_group_id = self.add_group(
            "Vendors - Guests",
            "microsoft365",
            "Collaboration with vendors",
            [
                *guests[: max(2, len(guests) * 2 // 3)],
                *self.pick(normal, 4),
                users_by_category["guest_like"][0],
            ],
        )
        self.add_group(
            "Room List - Redmond",
            "distribution",
            "Bookable rooms and equipment",
            users_by_category["room"] + users_by_category["equipment"],
        )

        department_group_ids = {
            name: self.add_group(
                f"Dept - {name}", "security", f"All members of the {name} department", members
            )
            for name, members in self.by_department.items()
        }

        self.build_team_groups(guests)

        ineligible_categories = ("guest", "disabled", "unlicensed", "shared", "room", "equipment", "service")
        by_category = {key: frozenset(value) for key, value in users_by_category.items()}
        empty: frozenset[str] = frozenset()
        return Landmarks(
            big_group_id=big_group_id,
            empty_group_id=empty_group_id,
            cycle_group_ids=(cycle_core, cycle_extended, cycle_steering),
            nested_chain=(chain_l1, chain_l2, chain_l3),
            mixed_members_group_id=mixed_group_id,
            guests_group_id=guests_group_id,
            department_group_ids=department_group_ids,
            guest_ids=by_category.get("guest", empty),
            guest_like_upn_ids=by_category.get("guest_like", empty),
            disabled_ids=by_category.get("disabled", empty),
            unlicensed_ids=by_category.get("unlicensed", empty),
            shared_mailbox_ids=by_category.get("shared", empty),
            room_ids=by_category.get("room", empty),
            equipment_ids=by_category.get("equipment", empty),
            service_account_ids=by_category.get("service", empty),
            no_mail_ids=by_category.get("no_mail", empty),
            ineligible_ids=frozenset().union(*(by_category.get(key, empty) for key in ineligible_categories)),
        )

    def build_team_groups(self, guests: list[str]) -> None:
        """Fill the remaining group slots with team/project groups: mostly small, a few large, some nested."""
        rng = self.rng
        all_user_ids = list(self.users)
        department_names = [name for name, _, _ in self.departments]
        department_weights = [weight for _, weight, _ in self.departments]
        kinds = ("microsoft365", "security", "distribution", "mailEnabledSecurity")
        kind_weights = (0.55, 0.2, 0.15, 0.1)
        contacts = list(self.contacts)
        team_ids: list[str] = []
        names_used: dict[str, int] = {}
        remaining = self.group_count - len(self.groups)
        for _ in range(remaining):
            department = rng.choices(department_names, department_weights)[0]
            kind = rng.choices(kinds, kind_weights)[0]
            topic = rng.choice(_TEAM_TOPICS)
            base_name = f"{department} - {topic}" if kind != "distribution" else f"DL {department} {topic}"
            seen = names_used.get(base_name, 0)
            names_used[base_name] = seen + 1
            name = base_name if seen == 0 else f"{base_name} {seen + 1}"
            roll = rng.random()
            if roll < 0.70:
                size = rng.randint(3, 25)
            elif roll < 0.92:
                size = rng.randint(25, 120)
            else:
                size = rng.randint(120, 600)
            pool = self.by_department[department] or all_user_ids
            from_department = self.pick(pool, round(size * 0.85))
            members = from_department + self.pick(all_user_ids, size - len(from_department))
            if kind == "microsoft365" and guests and rng.random() < 0.2:
                members += self.pick(guests, rng.randint(1, 3))
            if kind == "distribution" and contacts and rng.random() < 0.3:
                members += self.pick(contacts, rng.randint(1, 3))
            if team_ids and rng.random() < 0.1:
                # Nest an earlier team where Entra allows it (never in or of a Microsoft 365 group);
                # earlier teams only, so team nesting stays acyclic (the only cycle is the landmark).
                nested = rng.choice(team_ids)
                if self.groups[nested].kind in _NESTABLE_KINDS[kind]:
                    members.insert(0, nested)
            team_ids.append(self.add_group(name, kind, f"{topic} ({department})", members))

    def assign_plans(self) -> None:
        """assignedPlans from assignedLicenses; about 1 % keep a licence whose plans are not enabled."""
        rng = self.extra_rng
        lapsed: tuple[CapabilityStatus, ...] = ("Suspended", "LockedOut", "Deleted")
        normal = sorted(uid for uid, category in self.category.items() if category == "normal")
        suspended = set(rng.sample(normal, max(2, round(len(self.users) * 0.01))))
        self.suspended_ids = frozenset(suspended)
        for ordinal, (user_id, user) in enumerate(self.users.items()):
            if not user.assigned_licenses:
                continue
            status: CapabilityStatus = "Enabled"
            if user_id in suspended:
                status = lapsed[ordinal % len(lapsed)]
            elif rng.random() < 0.01:
                status = "Warning"  # in the grace period: still usable
            plans = plans_for(user.assigned_licenses, status, user.created_date_time)
            self.users[user_id] = msgspec.structs.replace(user, assigned_plans=plans)

    def add_external_members(self) -> None:
        """About 1 % of people become members synced in from a partner tenant (cross-tenant sync).

        They keep their groups; their UPN carries #EXT#, their mail is the partner's, userType stays
        Member, and they have no mailbox here.
        """
        rng = self.extra_rng
        partner = "fabrikam.com" if self.domain != "fabrikam.com" else "contoso.com"
        candidates = sorted(
            uid
            for uid, category in self.category.items()
            if category == "normal" and uid not in self.suspended_ids
        )
        chosen = sorted(rng.sample(candidates, max(2, round(len(self.users) * 0.01))))
        for user_id in chosen:
            user = self.users[user_id]
            external_mail = self.unique_external_mail(user.given_name or "x", user.surname or "y", partner)
            self.users[user_id] = msgspec.structs.replace(
                user,
                user_principal_name=guest_principal_name(external_mail, self.initial_domain),
                mail=external_mail,
                user_purpose=None,
            )
        self.external_ids = frozenset(chosen)

    def hide_memberships(self) -> tuple[str, ...]:
        """Make two small Microsoft 365 team groups HiddenMembership (only Microsoft 365 groups can be)."""
        unified_teams = [
            gid
            for gid, group in self.groups.items()
            if group.kind == "microsoft365"
            and 3 <= len(self.members[gid]) <= 40
            and not group.display_name.startswith(("Vendors", "Archive"))
        ]
        chosen = tuple(unified_teams[:2])
        for gid in chosen:
            self.groups[gid] = msgspec.structs.replace(self.groups[gid], visibility="HiddenMembership")
        return chosen

    def build(self) -> Tenant:
        self.build_users()
        self.build_other_objects()
        landmarks = self.build_groups()
        self.assign_plans()
        self.add_external_members()
        landmarks.hidden_membership_group_ids = self.hide_memberships()
        landmarks.suspended_license_ids = self.suspended_ids
        landmarks.external_member_ids = self.external_ids
        return Tenant(
            self.tenant_id,
            self.display_name,
            domain=self.domain,
            initial_domain=self.initial_domain,
            users=self.users,
            groups=self.groups,
            devices=self.devices,
            org_contacts=self.contacts,
            service_principals=self.service_principals,
            members=self.members,
            landmarks=landmarks,
        )


def guest_principal_name(external_mail: str, initial_domain: str) -> str:
    """A B2B guest's UPN: the external address with '@' as '_', then #EXT#@ the tenant's initial domain."""
    return f"{external_mail.replace('@', '_')}#EXT#@{initial_domain}"


def pick_groups_covering(tenant: Tenant, fraction: float = 0.6, count: int = 50) -> list[str]:
    """Pick `count` group ids whose transitive users cover about `fraction` of the tenant's users.

    Greedy: take the largest groups whose addition keeps coverage at or under the target,
    then fill the remaining slots with the groups that add the fewest new users.
    """
    target = fraction * len(tenant.users)
    sizes = {group_id: set(tenant.transitive_user_ids(group_id)) for group_id in tenant.groups}
    ordered = sorted(sizes, key=lambda group_id: (-len(sizes[group_id]), group_id))
    covered: set[str] = set()
    chosen: list[str] = []
    for group_id in ordered:
        if len(chosen) >= count or len(covered) >= target * 0.99:
            break
        gain = len(sizes[group_id] - covered)
        if gain and len(covered) + gain <= target * 1.02:
            chosen.append(group_id)
            covered |= sizes[group_id]
    remaining = [group_id for group_id in ordered if group_id not in set(chosen)]
    remaining.sort(key=lambda group_id: (len(sizes[group_id] - covered), group_id))
    for group_id in remaining[: max(0, count - len(chosen))]:
        chosen.append(group_id)
        covered |= sizes[group_id]
    return chosen
