"""Deployment: a trained policy on a robot (the simulator on the wall clock, or the Meca500), with safety checks,
figures and every rollout recorded as an episode. run_policy_robot.py is its command line; docs/deployment.md
the guide.

    robot.py           the robot interface the control loop uses, and RobotFault
    sim_robot.py       sim/'s NeedleInsertionEnv as a robot, stepped on the wall clock
    meca500.py         the Meca500 through mecademicpy: units, conventions, connection, motion, feedback
    cameras.py         OpenCV cameras, each read in its own thread (newest frame and its time)
    tool.py            the needle-tip frame on the flange and its pose from the joints (sim's kinematics)
    safety.py          layout check before moving, observation checks, command checks (clip or stop)
    stop_request.py    Ctrl-C / SIGTERM as a flag the loop reads
    async_inference.py chunks predicted in a background thread
    control_loop.py    the loop: observe, act, check, send, record, on the wall clock
    recording.py       the rollout as an episode file; the dry run's log
    report.py          the run's figures, console lines and run.json
    session.py         one run from the exported policy to the recorded rollout (the command line's logic)
"""
