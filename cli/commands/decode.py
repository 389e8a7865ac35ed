"""`mptcpctl decode FILE [--json]`: run every frame of a capture through the real XDP program
(BPF_PROG_TEST_RUN, decode export on) and show the MPTCP options it decoded."""

import json

import click

from controller import decode as fmt
from controller import pcap

# Shortest frame the kernel's test run accepts (an Ethernet header).
ETH_HLEN = 14


def decode_capture(path: str) -> tuple[list[dict], str | None]:
    """(one record per frame, truncation warning or None). The file is read and checked before
    BPF is loaded, so a bad file fails fast (BadInput) even without root."""
    cap = pcap.open_capture(path)
    frames = list(cap.frames())
    from controller.datapath import Decoder

    decoder = Decoder()
    try:
        records = []
        for number, _linktype, frame in frames:
            if len(frame) < ETH_HLEN:
                records.append(fmt.unparsed_record(number))
                continue
            _verdict, res = decoder.decode(frame)
            records.append(fmt.packet_record(number, res))
    finally:
        decoder.close()
    return records, cap.warning


def render_table(records: list[dict]):
    from rich.table import Table

    table = Table(box=None, header_style="bold")
    for col in fmt.TABLE_COLUMNS:
        if col == "MPTCP options":
            # Takes the width left over; long hex values fold rather than vanish.
            table.add_column(col, ratio=1, min_width=24, overflow="fold")
        else:
            table.add_column(col, justify="right" if col == "frame" else "left", no_wrap=True)
    for row in fmt.table_rows(records):
        table.add_row(*row, style="red" if row[-1] else None)
    return table


@click.command()
@click.argument("file", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="One JSON object per packet per line.")
def decode(file, as_json):
    """Decode the MPTCP options of every packet in a pcap/pcapng FILE."""
    records, warning = decode_capture(file)
    if as_json:
        for rec in records:
            click.echo(json.dumps(rec))
    else:
        from rich.console import Console

        Console().print(render_table(records))
    if warning:
        click.echo(f"mptcpctl: warning: {warning}", err=True)
