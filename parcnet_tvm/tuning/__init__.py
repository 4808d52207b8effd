"""The tuning machinery, split the way MetaSchedule splits itself: budget, measurement
(builders, runners, boards), progress, task scheduler, tasks and the tuning loop. The
tuning log (database) is `parcnet_tvm.tuning_log`; the whole job is `parcnet_tvm.tune`."""
