"""The runner SDK and `innosystem runner` CLI (runners issue): connect to the runners service over
one bidirectional stream, receive compatible jobs, run processors, report results."""
