"""`repxctl hardware`: each agent's hardware inventory, through the daemon."""

from __future__ import annotations

import click

from .daemon import API_OPTION, connect, emit


def _gib(value) -> str:
    return f"{value / 2**30:.1f} GiB" if value else "-"


def render(agents: list[dict]) -> None:
    for n, entry in enumerate(agents):
        if n:
            click.echo()
        hw = entry.get("hardware")
        click.echo(f"{entry['agent']} ({entry['host']}, {entry['state']})")
        if not hw:
            click.echo("  no inventory (an agent older than hardware detection)")
            continue
        cpu, mem = hw["cpu"], hw["memory"]
        click.echo(f"  cpu     {cpu['model']}: {cpu['cores']} of {cpu['logical']} CPUs")
        limit = f", cgroup limit {_gib(mem['cgroup_limit'])}" if mem.get("cgroup_limit") else ""
        click.echo(f"  memory  {_gib(mem['total'])}{limit}")
        if not hw["gpus"]:
            click.echo("  gpus    none")
        in_use = set(entry.get("gpus_in_use") or ())
        for gpu in hw["gpus"]:
            state = "in use" if gpu["id"] in in_use else "free"
            click.echo(f"  {gpu['id']:<9} {gpu['model']}  {_gib(gpu.get('memory'))}  {gpu.get('pci_bus_id') or '-'}  "
                       f"{' '.join(gpu['devices'])}  [{state}]")
        for vendor, version in sorted(hw.get("drivers", {}).items()):
            click.echo(f"  driver  {vendor} {version}")
        if hw.get("cdi"):
            click.echo(f"  cdi     {' '.join(hw['cdi'])}")


@click.command()
@click.option("--agent", help="Only this agent.")
@API_OPTION
@click.option("--json", "as_json", is_flag=True)
def hardware(agent, api_address, as_json) -> None:
    """GPUs, CPU and memory of each agent, and which GPUs running jobs hold."""
    data = connect(api_address).call("GET", "/v1/hardware", params={"agent": agent} if agent else None)
    emit(as_json, data, render)
