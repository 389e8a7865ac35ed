"""mptcpctl controller: datapath loader, lab, decoders, and (later) the path manager."""
