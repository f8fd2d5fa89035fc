"""Links in forwarded messages: signed tokens and the records behind them."""
