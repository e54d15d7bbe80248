"""PyPI ``amocrm-api`` (package ``amocrm.v2``) drives the sandbox through one seller's conversation.

The library builds ``https://{subdomain}.amocrm.ru`` itself and has no setting for another address,
so requests' transport adapter is wrapped to send those URLs to the sandbox (and nothing else
anywhere). The same wrapper spaces requests 1/7 s apart, because the library does not throttle
(see known-faults.md); the ``limits.burst`` step turns the spacing off to show what happens then.
"""

from __future__ import annotations

import base64
import json
import sys
import time
from datetime import datetime, timedelta, timezone

import requests.adapters

import harness

PACER = harness.Pacer()
_send = requests.adapters.HTTPAdapter.send


def _to_sandbox(self, request, **kwargs):  # type: ignore[no-untyped-def]
    request.url = harness.sandbox_url(request.url)
    PACER.wait()
    return _send(self, request, **kwargs)


requests.adapters.HTTPAdapter.send = _to_sandbox  # type: ignore[method-assign]

from amocrm.v2 import Contact, Lead, Pipeline, Task, User, tokens
from amocrm.v2.interaction import BaseInteraction


def claims(jwt: str) -> dict:
    payload = jwt.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def main() -> int:
    conv = harness.Conversation("amocrm-api")
    s = conv.state
    storage = tokens.MemoryTokensStorage()
    manager = tokens.default_token_manager
    manager(
        client_id=harness.CLIENT_ID,
        client_secret=harness.CLIENT_SECRET,
        subdomain=harness.SUBDOMAIN,
        redirect_url=harness.REDIRECT_URI,
        storage=storage,
    )

    @conv.step("oauth.code_exchange")
    def _() -> None:
        manager.init(harness.authorization_code("amocrm-api"))
        access = storage.get_access_token()
        assert access and storage.get_refresh_token(), "no token pair stored"
        assert claims(access)["base_domain"] == "amocrm.ru"
        s["access"] = access

    @conv.step("oauth.refresh", needs=("access",))
    def _() -> None:
        # The library refreshes only once the token has expired (TokenManager.get_access_token);
        # its refresh call is the one it makes then.
        access, refresh = manager._get_new_tokens()
        storage.save_tokens(access, refresh)
        assert access != s["access"], "the refresh returned the same access token"

    @conv.step("account.get")
    def _() -> None:
        data, status = BaseInteraction().request("get", "account")
        assert status == 200 and data["subdomain"] == harness.SUBDOMAIN, (status, data)

    @conv.step("pipelines.list")
    def _() -> None:
        pipelines = list(Pipeline.objects.all())
        main = next(p for p in pipelines if p.is_main)
        stages = [st for st in main.statuses if st.type == 0 and st.id not in (142, 143)]
        assert stages, "the main pipeline has no ordinary stage"
        s["pipeline_id"], s["status_id"] = main.id, stages[0].id

    @conv.step("leads.complex", needs=("pipeline_id",))
    def _() -> None:
        # amocrm.v2 has no model for leads/complex; its public request() sends the raw call.
        body = [
            {
                "name": "Order #A-1",
                "price": 1500,
                "pipeline_id": s["pipeline_id"],
                "status_id": s["status_id"],
                "_embedded": {
                    "contacts": [
                        {
                            "first_name": "Dilnoza",
                            "last_name": "Karimova",
                            "custom_fields_values": [
                                {
                                    "field_code": "PHONE",
                                    "values": [{"value": "+998901234567", "enum_code": "WORK"}],
                                }
                            ],
                        }
                    ]
                },
            }
        ]
        data, status = BaseInteraction().request("post", "leads/complex", data=body)
        assert status == 200, (status, data)
        s["lead_id"], s["contact_id"] = data[0]["id"], data[0]["contact_id"]
        assert s["contact_id"], "no contact created"

    @conv.step("leads.get", needs=("lead_id",))
    def _() -> None:
        lead = Lead.objects.get(object_id=s["lead_id"])
        assert (lead.name, lead.price) == ("Order #A-1", 1500)
        assert [c.id for c in lead.contacts] == [s["contact_id"]]
        s["lead"] = lead

    @conv.step("leads.update", needs=("lead",))
    def _() -> None:
        lead = s["lead"]
        lead.name = "Order #A-1 (paid)"
        lead.price = 1750
        lead.save()
        stored = harness.sandbox_lead(s["lead_id"])
        assert (stored["name"], stored["price"]) == ("Order #A-1 (paid)", 1750), stored

    @conv.step("contacts.get_with_leads", needs=("contact_id",))
    def _() -> None:
        contact = Contact.objects.get(object_id=s["contact_id"])
        assert contact.first_name == "Dilnoza"
        assert s["lead_id"] in [lead.id for lead in contact.leads]

    @conv.step("notes.add", needs=("lead",))
    def _() -> None:
        note = s["lead"].notes(text="Paid 1750 by card")
        note.save()
        assert note.id

    @conv.step("notes.list", needs=("lead",))
    def _() -> None:
        texts = [n._data["params"]["text"] for n in s["lead"].notes.objects.all()]
        assert texts == ["Paid 1750 by card"], texts

    @conv.step("tasks.add", needs=("lead",))
    def _() -> None:
        # timezone.utc, not datetime.UTC: Python 3.10 has no datetime.UTC.
        due = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(days=1)  # noqa: UP017
        s["lead"].tasks.add(Task(text="Ship the order", complete_till=due, task_type_id=1))

    @conv.step("tasks.add_via_manager", needs=("lead_id",))
    def _() -> None:
        # The manager sends the dict as it is, so complete_till goes as the integer amoCRM documents.
        task = Task.objects.create(
            text="Ship the order",
            complete_till=int(time.time()) + 86400,
            entity_id=s["lead_id"],
            entity_type="leads",
            task_type_id=1,
        )
        assert task.id

    @conv.step("tasks.list", needs=("lead",))
    def _() -> None:
        texts = [t.text for t in s["lead"].tasks]
        assert texts == ["Ship the order"], texts

    @conv.step("users.list")
    def _() -> None:
        users = list(User.objects.all())
        assert any(u.is_admin for u in users), [u.name for u in users]

    @conv.step("limits.burst")
    def _() -> None:
        # Eight calls at once, as code using the library without its own pacing would make them,
        # once the paced calls of the last second no longer count.
        time.sleep(1)
        PACER.enabled = False
        try:
            for _ in range(8):
                list(User.objects.all())
        finally:
            PACER.enabled = True
            time.sleep(1)

    return conv.finish()


if __name__ == "__main__":
    sys.exit(main())
