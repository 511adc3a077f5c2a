"""faust-streaming app and agents, bot runner and backtest driver."""
