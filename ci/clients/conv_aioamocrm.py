"""PyPI ``aioamocrm`` drives the sandbox through one seller's conversation.

The library takes the account address as ``base_url``, so it is pointed at the sandbox directly;
an httpx transport check makes sure no request goes anywhere else. It spaces API calls itself
(``RateLimiter``, 7/s), so no pacing is added.
"""

from __future__ import annotations

import asyncio
import sys
import time

import httpx
from aioamocrm import AmoCRMClient, Contact, Embedded, Lead, Note, OAuth2, Task, TokenEndpoint

import harness


class _LocalOnly(httpx.AsyncHTTPTransport):
    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        harness.sandbox_url(str(request.url))
        return await super().handle_async_request(request)


async def conversation(conv: harness.Conversation) -> None:
    s = conv.state
    auth = OAuth2(harness.CLIENT_ID, harness.CLIENT_SECRET, harness.REDIRECT_URI)
    http = httpx.AsyncClient(transport=_LocalOnly(), timeout=10)
    amo = AmoCRMClient(auth=auth, base_url=harness.ACCOUNT_URL, http=http)
    endpoint = TokenEndpoint(http=http, url=amo.token_url)
    steps: list[tuple[str, tuple[str, ...], object]] = []

    def step(name: str, needs: tuple[str, ...] = ()):  # type: ignore[no-untyped-def]
        def add(fn):  # type: ignore[no-untyped-def]
            steps.append((name, needs, fn))
            return fn

        return add

    @step("oauth.code_exchange")
    async def _() -> None:
        tokens = await amo.exchange_code(harness.authorization_code("aioamocrm"))
        s["access"] = tokens.access_token

    @step("oauth.refresh", needs=("access",))
    async def _() -> None:
        tokens = await auth.refresh(endpoint)
        assert tokens.access_token != s["access"]

    @step("account.get")
    async def _() -> None:
        account = await amo.account.get()
        assert account.subdomain == harness.SUBDOMAIN

    @step("pipelines.list")
    async def _() -> None:
        pipelines = await amo.pipelines.list()
        main = next(p for p in pipelines if p.is_main)
        stages = [st for st in main.embedded.statuses if st.type == 0 and st.id not in (142, 143)]
        s["pipeline_id"], s["status_id"] = main.id, stages[0].id

    @step("leads.complex", needs=("pipeline_id",))
    async def _() -> None:
        contact = Contact(first_name="Aziz", last_name="Rakhimov")
        contact.set_field("PHONE", "+998935550011", enum_code="WORK")
        lead = Lead(
            name="Order #B-1",
            price=990,
            pipeline_id=s["pipeline_id"],
            status_id=s["status_id"],
            embedded=Embedded(contacts=[contact]),
        )
        [result] = await amo.leads.create_complex([lead])
        assert result.contact_id
        s["lead_id"], s["contact_id"] = result.id, result.contact_id

    @step("leads.get", needs=("lead_id",))
    async def _() -> None:
        lead = await amo.leads.get(s["lead_id"], with_="contacts")
        assert (lead.name, lead.price) == ("Order #B-1", 990)
        assert [c.id for c in lead.embedded.contacts] == [s["contact_id"]]
        s["lead"] = lead

    @step("leads.update", needs=("lead_id",))
    async def _() -> None:
        await amo.leads.update([Lead(id=s["lead_id"], name="Order #B-1 (paid)", price=1090)])
        stored = harness.sandbox_lead(s["lead_id"])
        assert (stored["name"], stored["price"]) == ("Order #B-1 (paid)", 1090), stored

    @step("leads.update_fetched_model", needs=("lead",))
    async def _() -> None:
        # Read, change, write back: the fetched model sends its _embedded.contacts too.
        lead = s["lead"]
        lead.price = 1190
        await amo.leads.update([lead])
        assert harness.sandbox_lead(s["lead_id"])["price"] == 1190

    @step("contacts.get_with_leads", needs=("contact_id",))
    async def _() -> None:
        contact = await amo.contacts.get(s["contact_id"], with_="leads")
        assert contact.first_name == "Aziz"
        assert s["lead_id"] in [lead.id for lead in contact.embedded.leads]

    @step("notes.add", needs=("lead_id",))
    async def _() -> None:
        [ref] = await amo.leads.notes.create([Note.common(s["lead_id"], "Paid 1090 by card")])
        assert ref.id

    @step("notes.list", needs=("lead_id",))
    async def _() -> None:
        page = await amo.leads.notes.get_page(entity_id=s["lead_id"])
        assert [n.text for n in page] == ["Paid 1090 by card"]

    @step("tasks.add", needs=("lead_id",))
    async def _() -> None:
        task = Task(
            text="Ship the order",
            complete_till=int(time.time()) + 86400,
            entity_id=s["lead_id"],
            entity_type="leads",
            task_type_id=1,
        )
        [ref] = await amo.tasks.create([task])
        assert ref.id

    @step("tasks.list", needs=("lead_id",))
    async def _() -> None:
        page = await amo.tasks.get_page(filter={"entity_type": "leads", "entity_id": [s["lead_id"]]})
        assert [t.text for t in page] == ["Ship the order"]

    @step("users.list")
    async def _() -> None:
        page = await amo.users.get_page()
        assert len(page) >= 1

    @step("limits.burst")
    async def _() -> None:
        # Eight calls at once, in a fresh second: the library's limiter must keep them under 7.
        await asyncio.sleep(1)
        await asyncio.gather(*(amo.account.get() for _ in range(8)))

    try:
        for name, needs, fn in steps:
            await conv.run_async(name, needs, fn)
    finally:
        await amo.aclose()
        await http.aclose()


def main() -> int:
    conv = harness.Conversation("aioamocrm")
    asyncio.run(conversation(conv))
    return conv.finish()


if __name__ == "__main__":
    sys.exit(main())
