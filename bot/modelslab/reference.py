"""The endpoint reference for admins, written from the catalogue.

``python -m bot.modelslab.reference > docs/endpoints.md`` regenerates it; a test keeps the
committed file in step with the catalogue.
"""

from __future__ import annotations

from bot.modelslab.catalogue import ENDPOINTS, Endpoint, FieldRule, ValueKind


def _default(endpoint: Endpoint, rule: FieldRule) -> str:
    if rule.option == "model":
        return "DEFAULT_MODEL_ID"
    if rule.required:
        return "required"
    if rule.option in ("width", "height"):
        return "follows the image"
    if rule.option == "safety_checker":
        return "on (off only in NSFW channels that allow it)"
    if rule.default is None:
        return "random" if rule.option == "seed" else "not sent"
    if rule.kind is ValueKind.FLAG:
        return repr(endpoint.wire_flag(rule.default)).replace("'", '"')
    return str(rule.default)


def _rule(rule: FieldRule) -> str:
    if rule.kind is ValueKind.CHOICE and rule.allowed and len(rule.allowed) > 4:
        return f"one of {len(rule.allowed)} (listed below)"
    if rule.kind is ValueKind.FLAG:
        return "true / false"
    if rule.kind is ValueKind.URL:
        return "an image URL"
    text = rule.describe_rule()
    return "" if text == "set" else text


def render() -> str:
    out = [
        "# Endpoints",
        "",
        "Generated from `bot/modelslab/catalogue.py` by `python -m bot.modelslab.reference`;"
        " do not edit by hand.",
        "",
        "| choice | path | key | flags on the wire | fetch route |",
        "| --- | --- | --- | --- | --- |",
    ]
    for e in ENDPOINTS.values():
        flags = '"yes" / "no"' if e.flag_wire == "yes_no" else "JSON true / false"
        out.append(f"| `{e.name}` | `{e.path}` | {e.key} | {flags} | `{e.fetch.path}` |")
    for e in ENDPOINTS.values():
        picked = (f"; `endpoint:{e.choice_name}` of /{e.operation}"
                  if e.operation != "upscale" else "; the `Upscale` button")
        out += ["", f"## `{e.name}` ({e.operation}, `{e.path}`{picked})", "",
                "| option | sent as | rule | default |", "| --- | --- | --- | --- |"]
        for rule in e.rules.values():
            name = rule.option if rule.member_option else f"({rule.option})"
            out.append(f"| {name} | `{rule.wire}` | {_rule(rule)} | {_default(e, rule)} |")
        for wire, value in e.fixed.items():
            shown = e.wire_flag(value) if isinstance(value, bool) else value
            out.append(f"| (fixed) | `{wire}` | | {str(shown).lower()} |")
        if e.schedulers:
            out += ["", "Schedulers: " + ", ".join(e.schedulers) + "."]
        for rule in e.rules.values():
            if rule.option != "scheduler" and rule.kind is ValueKind.CHOICE and rule.allowed \
                    and len(rule.allowed) > 4:
                out += ["", f"{rule.label.capitalize()}s: " + ", ".join(rule.allowed) + "."]
    out += ["", "Options in parentheses are set by the bot, not by members.", ""]
    return "\n".join(out)


if __name__ == "__main__":
    print(render(), end="")
